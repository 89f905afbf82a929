//! Strict decoding: `k8s-openapi`'s types skip fields they do not know, which would hide a
//! misspelt field in a rendered object or a manifest. These helpers decode through
//! `serde_ignored` and refuse any field the type does not have, naming its path.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a document does not decode strictly into its type.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StrictError {
    #[error("{type_name}: {detail}")]
    Decode { type_name: &'static str, detail: String },
    #[error("{type_name}: unknown fields {fields:?}")]
    UnknownFields { type_name: &'static str, fields: Vec<String> },
    #[error("{type_name}: does not round-trip: wrote {written}, read back {reread}")]
    NotRoundTrip { type_name: &'static str, written: String, reread: String },
}

/// Decodes `value` into `T`, refusing unknown fields.
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, StrictError> {
    let type_name = std::any::type_name::<T>();
    let mut unknown = Vec::new();
    let t = serde_ignored::deserialize(value, |path| unknown.push(path.to_string()))
        .map_err(|e| StrictError::Decode { type_name, detail: e.to_string() })?;
    if unknown.is_empty() { Ok(t) } else { Err(StrictError::UnknownFields { type_name, fields: unknown }) }
}

/// Decodes a YAML document into `T`, refusing unknown fields.
pub fn from_yaml<T: DeserializeOwned>(text: &str) -> Result<T, StrictError> {
    let type_name = std::any::type_name::<T>();
    let v: serde_json::Value =
        serde_yaml::from_str(text).map_err(|e| StrictError::Decode { type_name, detail: e.to_string() })?;
    from_value(v)
}

/// Serializes `t`, decodes it strictly as `T` again, and checks that the two JSON forms are
/// equal: every field written is one the Kubernetes type knows, and none is lost.
pub fn round_trip<T: Serialize + DeserializeOwned>(t: &T) -> Result<serde_json::Value, StrictError> {
    let type_name = std::any::type_name::<T>();
    let written =
        serde_json::to_value(t).map_err(|e| StrictError::Decode { type_name, detail: e.to_string() })?;
    let back: T = from_value(written.clone())?;
    let reread =
        serde_json::to_value(&back).map_err(|e| StrictError::Decode { type_name, detail: e.to_string() })?;
    if reread != written {
        return Err(StrictError::NotRoundTrip {
            type_name,
            written: written.to_string(),
            reread: reread.to_string(),
        });
    }
    Ok(written)
}
