//! The fleet: every gateway's live state, built from heartbeats and presence.
