//! smtplab: a teaching SMTP server. A welcome socket, a thread per client, an explicit RFC 5321
//! state machine, mbox delivery. Each module below opens with the RFC sections it implements.

pub mod address;
pub mod compare;
pub mod datetime;
pub mod mbox;
pub mod replay;
pub mod transcript;
