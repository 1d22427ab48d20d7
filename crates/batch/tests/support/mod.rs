//! Helpers shared by this crate's integration tests (and, by path, the command's).

#![allow(unreachable_pub, dead_code)]

pub mod postgres;
