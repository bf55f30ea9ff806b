//! What the rest of the agent may ask of the MQTT session: queue a message for publishing.
//!
//! A trait, so the dispatcher and status code are tested without a broker, and so nothing
//! outside `session.rs` ever touches the MQTT client.

use bytes::Bytes;
use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    AtMostOnce,
    AtLeastOnce,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutMessage {
    pub topic: String,
    pub payload: Bytes,
    pub qos: Qos,
    pub retain: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UplinkError {
    #[error("the session is shutting down")]
    Closed,
    #[error("the outgoing queue is full")]
    Full,
}

/// Never blocks: a message that cannot be queued is refused at once, so no caller can stall
/// on a dead link. Replies refused here are recovered by the console re-sending the request,
/// which the reply cache answers.
pub trait Uplink: Send + Sync + 'static {
    fn publish(&self, msg: OutMessage) -> Result<(), UplinkError>;

    /// Like `publish`, ahead of everything already queued: for heartbeats, which must keep
    /// their cadence even while thousands of replies wait to go out.
    fn publish_urgent(&self, msg: OutMessage) -> Result<(), UplinkError> {
        self.publish(msg)
    }
}

#[cfg(test)]
pub mod fake {
    use super::*;
    use std::sync::Mutex;

    /// Records what would have been published.
    #[derive(Default)]
    pub struct RecordingUplink {
        pub sent: Mutex<Vec<OutMessage>>,
    }

    impl Uplink for RecordingUplink {
        fn publish(&self, msg: OutMessage) -> Result<(), UplinkError> {
            self.sent.lock().unwrap().push(msg);
            Ok(())
        }
    }

    impl RecordingUplink {
        pub fn take(&self) -> Vec<OutMessage> {
            std::mem::take(&mut *self.sent.lock().unwrap())
        }
    }
}
