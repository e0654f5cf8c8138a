//! A bare Pingora pass-through, the load test's yardstick for the gateway's own cost
//! (`loadtest/run.sh`, target `bare-pingora`): every request goes to one upstream, with
//! nothing read, checked or logged on the way, in the same kind of server (worker threads
//! from `--threads`) as `tollgate run`.
//!
//!   cargo run --release --example bare_proxy -- LISTEN UPSTREAM THREADS

use async_trait::async_trait;
use pingora::prelude::*;
use std::net::SocketAddr;

// The same allocator as the `tollgate` binary, so the two differ only in what they do.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, upstream, threads] = &args[..] else {
        eprintln!("usage: bare_proxy LISTEN UPSTREAM THREADS");
        std::process::exit(2);
    };
    let upstream: SocketAddr = upstream.parse().expect("UPSTREAM is host:port");
    let threads: usize = threads.parse().expect("THREADS is a number");
    let mut server = Server::new(None).expect("a Pingora server");
    server.bootstrap();
    let mut proxy = http_proxy_service(&server.configuration, Bare { upstream });
    proxy.add_tcp(listen);
    proxy.threads = Some(threads);
    server.add_service(proxy);
    server.run_forever();
}
