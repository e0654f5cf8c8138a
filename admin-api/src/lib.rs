//! Tollgate's control plane: the admin REST API of SPEC §7.
//!
//! This crate is an empty shell until the admin API issue lands; it exists so the
//! workspace layout (gateway at the root, control plane beside it) is fixed from the start.
