//! What the rest of the agent may ask of the MQTT session: queue a message for publishing.
//!
//! A trait, so the dispatcher and status code are tested without a broker; the MQTT session
//! of `csg_transport` implements it.

pub use csg_transport::session::{Message as OutMessage, PublishError as UplinkError, Qos};

/// Never blocks: a message that cannot be queued is refused at once, so no caller can stall
/// on a dead link. Replies refused here are recovered by the console re-sending the request:
/// a mutation's repeat is answered from the id memory, a read simply runs again.
pub trait Uplink: Send + Sync + 'static {
    fn publish(&self, msg: OutMessage) -> Result<(), UplinkError>;

    /// Like `publish`, ahead of everything already queued: for heartbeats, which must keep
    /// their cadence even while thousands of replies wait to go out.
    fn publish_urgent(&self, msg: OutMessage) -> Result<(), UplinkError> {
        self.publish(msg)
    }
}

impl Uplink for csg_transport::Session {
    fn publish(&self, msg: OutMessage) -> Result<(), UplinkError> {
        csg_transport::Session::publish(self, msg)
    }

    fn publish_urgent(&self, msg: OutMessage) -> Result<(), UplinkError> {
        csg_transport::Session::publish_urgent(self, msg)
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
