//! `iscsi.*` params and results (filled in with the iscsi family).
