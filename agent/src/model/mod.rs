//! What each storage family manages, as the backends take it: the resources, the snapshot of
//! what a backend holds, one change, the plan that carries it out, and the family's backend
//! trait. Nothing here runs a program or knows a method name; backends and families build on it.

pub mod iscsi;
pub mod nfs;
pub mod smb;

use std::future::Future;
use std::pin::Pin;

/// A boxed future: what a trait object's async method returns.
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One change to one resource: a single value, so no code has to unpack a pair of options
/// that cannot both be empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change<T> {
    Create(T),
    Update { from: T, to: T },
    Delete(T),
}

impl<T> Change<T> {
    /// The change that takes `before` to `after`; `None` when both are absent.
    pub fn between(before: Option<T>, after: Option<T>) -> Option<Self> {
        match (before, after) {
            (None, Some(to)) => Some(Change::Create(to)),
            (Some(from), Some(to)) => Some(Change::Update { from, to }),
            (Some(old), None) => Some(Change::Delete(old)),
            (None, None) => None,
        }
    }

    /// The resource as it was, if it existed.
    pub fn before(&self) -> Option<&T> {
        match self {
            Change::Create(_) => None,
            Change::Update { from, .. } => Some(from),
            Change::Delete(old) => Some(old),
        }
    }

    /// The resource as it will be, unless deleted.
    pub fn after(&self) -> Option<&T> {
        match self {
            Change::Create(to) | Change::Update { to, .. } => Some(to),
            Change::Delete(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Change;

    #[test]
    fn a_change_knows_both_sides() {
        let c = Change::between(Some(1), Some(2)).unwrap();
        assert_eq!((c.before(), c.after()), (Some(&1), Some(&2)));
        let c = Change::between(None, Some(2)).unwrap();
        assert_eq!((c.before(), c.after()), (None, Some(&2)));
        let c = Change::between(Some(1), None).unwrap();
        assert_eq!((c.before(), c.after()), (Some(&1), None));
        assert_eq!(Change::<u8>::between(None, None), None);
    }
}
