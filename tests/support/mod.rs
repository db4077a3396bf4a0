//! Shared test helpers, one per boundary. Each integration test file does
//! `mod support;` and uses the helpers it needs.
#![allow(dead_code)]

pub mod browser;
pub mod control_plane;
pub mod docker;
pub mod host;
pub mod images;
pub mod plane_process;
pub mod private_dockerd;
pub mod scripted_server;
pub mod worker;
