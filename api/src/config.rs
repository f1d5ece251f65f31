//! Config versions: which copy of a ConfigMap or Secret a revision's pods read.
//!
//! Only names and content digests: a Secret's contents never leave the Secret.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Label on a per-revision config copy: the name of the ConfigMap or Secret it copies.
pub const SOURCE_LABEL: &str = "deployctl.dev/config-source";

/// Kind of a referenced config object.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub enum ConfigKind {
    /// A ConfigMap.
    ConfigMap,
    /// A Secret.
    Secret,
}

impl std::fmt::Display for ConfigKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConfigKind::ConfigMap => "ConfigMap",
            ConfigKind::Secret => "Secret",
        })
    }
}

/// One ConfigMap or Secret as a revision recorded it: the pods of that revision read the
/// immutable copy `copy`, whatever the user's object holds today.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigVersion {
    /// `ConfigMap` or `Secret`.
    pub kind: ConfigKind,
    /// Name of the user's object the component references.
    pub name: String,
    /// Name of the immutable per-revision copy the pods reference (`<name>-<hash>`).
    pub copy: String,
    /// Digest of the content (never the content itself).
    pub hash: String,
}
