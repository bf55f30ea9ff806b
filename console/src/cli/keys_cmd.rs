//! Signed commands on the command line: `csgctl keygen`, and the global `--sign-key` /
//! `--key-id` that sign every request csgctl sends.

use std::path::PathBuf;

use clap::Args;
use csg_console::sign::{generate_key, write_key_pair};
use csg_console::Signer;

use super::{out, Exit, Usage};

/// Global options: sign every request (for gateways with `require_signed_commands`).
#[derive(Debug, Args)]
pub struct SignArgs {
    /// Sign every request with this Ed25519 private key (PEM PKCS#8, as `csgctl keygen` writes)
    #[arg(
        long,
        global = true,
        help_heading = "Signed commands",
        env = "CSG_SIGN_KEY",
        value_name = "FILE"
    )]
    pub sign_key: Option<PathBuf>,

    /// The key id the gateways know the key by [default: the id `csgctl keygen` printed]
    #[arg(
        long,
        global = true,
        help_heading = "Signed commands",
        env = "CSG_KEY_ID",
        value_name = "ID",
        requires = "sign_key"
    )]
    pub key_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Write PREFIX.key (private, mode 0600) and PREFIX.pub (public, for the agent's
    /// trusted_keys)
    #[arg(long, value_name = "PREFIX")]
    pub out: PathBuf,

    /// Replace existing files
    #[arg(long)]
    pub force: bool,
}

/// The signer the global options ask for, if any. A key that cannot be read is a usage error.
pub fn signer(args: &SignArgs) -> anyhow::Result<Option<Signer>> {
    let Some(path) = &args.sign_key else {
        return Ok(None);
    };
    Signer::from_file(path, args.key_id.as_deref())
        .map(Some)
        .map_err(|e| Usage(e.to_string()).into())
}

pub fn keygen(args: &KeygenArgs) -> anyhow::Result<Exit> {
    let key = generate_key();
    let (kid, priv_path, pub_path) =
        write_key_pair(&key, &args.out, args.force).map_err(|e| Usage(e.to_string()))?;
    drop(key);
    out(&format!(
        "private key: {}  (keep it secret; sign with: csgctl --sign-key {} --key-id {kid} ...)\n\
         public key:  {}\n\
         key id:      {kid}\n\n\
         On each gateway, copy the public key and add to the agent's config:\n\n\
         [security.trusted_keys.\"{kid}\"]\n\
         public_key_file = \"/etc/csg-agent/keys/{kid}.pub\"\n\
         allow = [\"*\"]\n",
        priv_path.display(),
        priv_path.display(),
        pub_path.display(),
    ));
    Ok(Exit::Ok)
}
