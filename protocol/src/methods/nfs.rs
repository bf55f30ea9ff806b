//! `nfs.*` params and results (filled in with the nfs family).
