//! Topic layout: one builder for every topic an agent or a console uses, one parser for
//! the topics a console receives, and the 64-character rule checked in one place.
//!
//! Three parent topics keep traffic of different direction, priority and volume apart:
//!
//! | parent       | direction          | carries                                  |
//! |--------------|--------------------|------------------------------------------|
//! | `csg-down`   | console → instance | commands                                 |
//! | `csg-up`     | instance → console | replies (low volume, high priority)      |
//! | `csg-status` | instance → console | heartbeats and presence (high volume)    |

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::identity::{ClientId, InstanceId};

/// Level inserted by Alibaba Cloud MQTT's point-to-point mode: `{parent}/p2p/{client_id}`.
pub const P2P_LEVEL: &str = "p2p";
/// Last level of a presence topic.
pub const PRESENCE_LEVEL: &str = "presence";

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TopicError {
    #[error("topic {topic:?} is {len} characters long; the limit is {limit}")]
    TooLong {
        topic: String,
        len: usize,
        limit: usize,
    },
    #[error("{what} parent topic {value:?} is invalid: {reason}")]
    BadParent {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("parent topics must differ: {0:?} is used twice")]
    SameParent(String),
    #[error("reply topic {topic:?} is not under the reply parent {parent:?}/")]
    ReplyOutside { topic: String, parent: String },
    #[error("reply topic {topic:?} is invalid: {reason}")]
    BadReplyTopic { topic: String, reason: &'static str },
}

/// The three parent topics. Each is one or more levels of `[A-Za-z0-9_.:-]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicParents {
    pub down: String,
    pub up: String,
    pub status: String,
}

impl Default for TopicParents {
    fn default() -> Self {
        Self {
            down: "csg-down".into(),
            up: "csg-up".into(),
            status: "csg-status".into(),
        }
    }
}

fn check_parent(what: &'static str, value: &str) -> Result<(), TopicError> {
    let bad = |reason| TopicError::BadParent {
        what,
        value: value.chars().take(80).collect(),
        reason,
    };
    if value.is_empty() {
        return Err(bad("it is empty"));
    }
    if value.starts_with('/') || value.ends_with('/') || value.contains("//") {
        return Err(bad("it has an empty level"));
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-' | '/'))
    {
        return Err(bad(
            "only [A-Za-z0-9_.:-] and '/' between levels are allowed",
        ));
    }
    Ok(())
}

impl TopicParents {
    /// Checks all three parents and returns every problem found.
    pub fn validate(&self) -> Vec<TopicError> {
        let mut errs = Vec::new();
        for (what, v) in [
            ("down", &self.down),
            ("up", &self.up),
            ("status", &self.status),
        ] {
            if let Err(e) = check_parent(what, v) {
                errs.push(e);
            }
        }
        if self.down == self.up || self.down == self.status {
            errs.push(TopicError::SameParent(self.down.clone()));
        } else if self.up == self.status {
            errs.push(TopicError::SameParent(self.up.clone()));
        }
        errs
    }

    /// Where a console sends commands for `target`.
    pub fn command_topic(&self, mode: TopicMode, target: &ClientId) -> String {
        match mode {
            TopicMode::Standard => format!("{}/{}", self.down, target.instance()),
            TopicMode::P2p { .. } => format!("{}/{P2P_LEVEL}/{}", self.down, target),
        }
    }

    /// The reply topic a console named `console` asks replies on.
    pub fn console_reply_topic(&self, mode: TopicMode, console: &ClientId) -> String {
        match mode {
            TopicMode::Standard => format!("{}/{}", self.up, console.instance()),
            TopicMode::P2p { .. } => format!("{}/{P2P_LEVEL}/{}", self.up, console),
        }
    }

    pub fn heartbeat_topic(&self, instance: &InstanceId) -> String {
        format!("{}/{}", self.status, instance)
    }

    pub fn presence_topic(&self, instance: &InstanceId) -> String {
        format!("{}/{}/{PRESENCE_LEVEL}", self.status, instance)
    }

    /// Subscription filters that see every gateway's heartbeats and presence.
    pub fn status_filters(&self) -> [String; 2] {
        [
            format!("{}/+", self.status),
            format!("{}/+/{PRESENCE_LEVEL}", self.status),
        ]
    }
}

/// How commands reach an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicMode {
    /// The agent subscribes `{down}/{instance_id}`; presence is retained and guarded by a Will.
    Standard,
    /// Alibaba Cloud MQTT point-to-point: commands arrive on `{down}/p2p/{client_id}` without a
    /// subscription; no retained messages and no Will (that broker supports neither).
    /// `subscribe` makes the client subscribe the P2P topic itself, for brokers without native P2P.
    P2p { subscribe: bool },
}

impl TopicMode {
    /// Whether presence is retained and a Last Will is set.
    pub fn retain_and_will(self) -> bool {
        matches!(self, TopicMode::Standard)
    }
}

/// A topic a console receives on the status parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusTopic {
    Heartbeat(InstanceId),
    Presence(InstanceId),
}

impl StatusTopic {
    pub fn parse(parents: &TopicParents, topic: &str) -> Option<Self> {
        let rest = topic.strip_prefix(&parents.status)?.strip_prefix('/')?;
        match rest.split_once('/') {
            None => InstanceId::new(rest).ok().map(StatusTopic::Heartbeat),
            Some((inst, PRESENCE_LEVEL)) => InstanceId::new(inst).ok().map(StatusTopic::Presence),
            Some(_) => None,
        }
    }
}

/// Every topic one agent uses, built once at start and checked against the length limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentTopics {
    /// Where commands arrive.
    pub commands: String,
    /// What the agent subscribes after each CONNACK (`None` with native P2P delivery).
    pub subscription: Option<String>,
    pub heartbeat: String,
    pub presence: String,
    /// Presence retained and a Last Will set (standard mode only).
    pub retain_and_will: bool,
    up_prefix: String,
    max_len: usize,
}

fn check_len(topic: &str, limit: usize) -> Result<(), TopicError> {
    let len = topic.chars().count();
    if len > limit {
        return Err(TopicError::TooLong {
            topic: topic.chars().take(200).collect(),
            len,
            limit,
        });
    }
    Ok(())
}

impl AgentTopics {
    /// Builds the agent's topics; every one that breaks the limit is reported.
    pub fn new(
        parents: &TopicParents,
        mode: TopicMode,
        client: &ClientId,
        max_len: usize,
    ) -> Result<Self, Vec<TopicError>> {
        let mut errs = parents.validate();
        if !errs.is_empty() {
            return Err(errs);
        }
        let commands = parents.command_topic(mode, client);
        let subscription = match mode {
            TopicMode::Standard | TopicMode::P2p { subscribe: true } => Some(commands.clone()),
            TopicMode::P2p { subscribe: false } => None,
        };
        let t = AgentTopics {
            commands,
            subscription,
            heartbeat: parents.heartbeat_topic(client.instance()),
            presence: parents.presence_topic(client.instance()),
            retain_and_will: mode.retain_and_will(),
            up_prefix: format!("{}/", parents.up),
            max_len,
        };
        for topic in [&t.commands, &t.heartbeat, &t.presence] {
            if let Err(e) = check_len(topic, max_len) {
                errs.push(e);
            }
        }
        // The shortest reply topic a console can use must fit too, or nothing could ever answer.
        if let Err(e) = check_len(&format!("{}x", t.up_prefix), max_len) {
            errs.push(e);
        }
        if errs.is_empty() {
            Ok(t)
        } else {
            Err(errs)
        }
    }

    /// A reply topic must be a plain topic under the reply parent, within the length limit:
    /// the agent never publishes outside its own topics.
    pub fn check_reply_to(&self, topic: &str) -> Result<(), TopicError> {
        let bad = |reason| TopicError::BadReplyTopic {
            topic: topic.chars().take(200).collect(),
            reason,
        };
        let rest = topic
            .strip_prefix(&self.up_prefix)
            .ok_or_else(|| TopicError::ReplyOutside {
                topic: topic.chars().take(200).collect(),
                parent: self.up_prefix.trim_end_matches('/').to_string(),
            })?;
        check_len(topic, self.max_len)?;
        if rest.is_empty() {
            return Err(bad("it names no level below the parent"));
        }
        if rest.contains(['+', '#', '\0']) {
            return Err(bad(
                "wildcards and NUL are not allowed in a topic to publish to",
            ));
        }
        if rest.split('/').any(str::is_empty) {
            return Err(bad("it has an empty level"));
        }
        Ok(())
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::GroupId;

    fn client(i: &str) -> ClientId {
        ClientId::new(
            GroupId::new("GID_csg").unwrap(),
            InstanceId::new(i).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn standard_topics() {
        let t = AgentTopics::new(
            &TopicParents::default(),
            TopicMode::Standard,
            &client("gw-1"),
            64,
        )
        .unwrap();
        assert_eq!(t.commands, "csg-down/gw-1");
        assert_eq!(t.subscription.as_deref(), Some("csg-down/gw-1"));
        assert_eq!(t.heartbeat, "csg-status/gw-1");
        assert_eq!(t.presence, "csg-status/gw-1/presence");
        assert!(t.retain_and_will);
    }

    #[test]
    fn p2p_topics() {
        let p = TopicParents::default();
        let c = client("gw-1");
        let t = AgentTopics::new(&p, TopicMode::P2p { subscribe: false }, &c, 64).unwrap();
        assert_eq!(t.commands, "csg-down/p2p/GID_csg@@@gw-1");
        assert_eq!(t.subscription, None);
        assert!(!t.retain_and_will);
        let t = AgentTopics::new(&p, TopicMode::P2p { subscribe: true }, &c, 64).unwrap();
        assert_eq!(
            t.subscription.as_deref(),
            Some("csg-down/p2p/GID_csg@@@gw-1")
        );
        let console = client("console-1");
        assert_eq!(
            p.console_reply_topic(TopicMode::P2p { subscribe: true }, &console),
            "csg-up/p2p/GID_csg@@@console-1"
        );
    }

    #[test]
    fn every_long_topic_is_reported() {
        let long = "i".repeat(55);
        let c = ClientId::new(GroupId::new("G").unwrap(), InstanceId::new(long).unwrap()).unwrap();
        let errs =
            AgentTopics::new(&TopicParents::default(), TopicMode::Standard, &c, 64).unwrap_err();
        // commands (64) fits; heartbeat (66) and presence (75) do not.
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].to_string().contains("limit is 64"));
    }

    #[test]
    fn reply_to_rules() {
        let t = AgentTopics::new(
            &TopicParents::default(),
            TopicMode::Standard,
            &client("gw-1"),
            64,
        )
        .unwrap();
        t.check_reply_to("csg-up/console-1").unwrap();
        t.check_reply_to("csg-up/p2p/GID@@@c1").unwrap();
        for bad in [
            "csg-down/gw-1",
            "csg-status/x",
            "csg-up",
            "csg-up/",
            "csg-upx/a",
            "csg-up/+",
            "csg-up/#",
            "csg-up/a//b",
            "/csg-up/a",
        ] {
            assert!(t.check_reply_to(bad).is_err(), "{bad} accepted");
        }
        let long = format!("csg-up/{}", "x".repeat(58));
        assert!(matches!(
            t.check_reply_to(&long),
            Err(TopicError::TooLong { .. })
        ));
    }

    #[test]
    fn parents_are_validated() {
        let p = TopicParents {
            down: "a/#".into(),
            up: "".into(),
            status: "ok".into(),
        };
        assert_eq!(p.validate().len(), 2);
        let p = TopicParents {
            down: "same".into(),
            up: "same".into(),
            status: "x".into(),
        };
        assert_eq!(p.validate(), vec![TopicError::SameParent("same".into())]);
    }

    #[test]
    fn status_topics_round_trip() {
        let p = TopicParents::default();
        let i = InstanceId::new("gw-9").unwrap();
        assert_eq!(
            StatusTopic::parse(&p, &p.heartbeat_topic(&i)),
            Some(StatusTopic::Heartbeat(i.clone()))
        );
        assert_eq!(
            StatusTopic::parse(&p, &p.presence_topic(&i)),
            Some(StatusTopic::Presence(i))
        );
        assert_eq!(StatusTopic::parse(&p, "csg-status/a/b"), None);
        assert_eq!(StatusTopic::parse(&p, "csg-statusx/a"), None);
    }
}
