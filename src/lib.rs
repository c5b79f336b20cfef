//! smtplab: a teaching SMTP server. A welcome socket, a thread per client, an explicit RFC 5321
//! state machine, mbox delivery. Each module below opens with the RFC sections it implements.
//!
//! Standards: RFC 5321 §2.3

pub mod address;
pub mod auth;
pub mod bench;
pub mod body;
pub mod bounce;
pub mod command;
pub mod compare;
pub mod config;
pub mod connection;
pub mod data;
pub mod datetime;
pub mod delivery;
pub mod diagram;
pub mod dns;
pub mod extensions;
pub mod fault;
pub mod gate;
pub mod line;
pub mod machine;
pub mod mbox;
pub mod pop3;
pub mod pop3_server;
pub mod queue;
pub mod relay;
pub mod replay;
pub mod reply;
pub mod server;
pub mod session;
pub mod tls;
pub mod trace;
pub mod transcript;
