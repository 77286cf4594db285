//! Helpers shared by the datapath test binaries (`datapath`,
//! `ovs_datapath`): each includes this with `mod common;`. Not every binary
//! uses every helper.
#![allow(dead_code)]

pub mod netns;
pub mod tcp_echo;
