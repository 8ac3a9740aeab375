//! One file per shape of the benchmark; `traffic` is the measuring loop `pairs` and `fanout`
//! share.

pub mod drain;
pub mod fanout;
pub mod idle;
pub mod login;
pub mod pairs;
pub mod traffic;
