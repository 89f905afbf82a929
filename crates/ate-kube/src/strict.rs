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
    let t = serde_ignored::deserialize(value, |path| unknown.push(ate_core::resource::field_path(&path)))
        .map_err(|e| StrictError::Decode { type_name, detail: e.to_string() })?;
    if unknown.is_empty() { Ok(t) } else { Err(StrictError::UnknownFields { type_name, fields: unknown }) }
}

/// Decodes a custom resource (a kube-derived type, whose own decoding skips `apiVersion` and
/// `kind`): those must be the type's, and every other field must be known.
pub fn resource_from_value<K>(mut value: serde_json::Value) -> Result<K, StrictError>
where
    K: kube::Resource<DynamicType = ()> + DeserializeOwned + StrictSpec,
{
    let type_name = std::any::type_name::<K>();
    let want = [("apiVersion", K::api_version(&()).into_owned()), ("kind", K::kind(&()).into_owned())];
    let Some(map) = value.as_object_mut() else {
        return Err(StrictError::Decode { type_name, detail: "not an object".into() });
    };
    for (field, want) in want {
        match map.remove(field) {
            Some(serde_json::Value::String(got)) if got == want => {}
            got => {
                return Err(StrictError::Decode {
                    type_name,
                    detail: format!("{field} is {got:?}, not {want:?}"),
                });
            }
        }
    }
    // The spec type is ate-core's, flattened into the derived one, and serde's flatten
    // hides its unknown fields from serde_ignored: check the spec as its own type.
    if let Some(spec) = value.get("spec") {
        K::check_spec(spec.clone())?;
    }
    from_value(value)
}

/// A custom resource whose `spec` decodes strictly as a type of its own.
pub trait StrictSpec {
    fn check_spec(spec: serde_json::Value) -> Result<(), StrictError>;
}

impl StrictSpec for crate::crd::WorkerPool {
    fn check_spec(spec: serde_json::Value) -> Result<(), StrictError> {
        from_value::<ate_core::resource::PoolSpec>(spec).map(drop)
    }
}

impl StrictSpec for crate::crd::ActorTemplate {
    fn check_spec(spec: serde_json::Value) -> Result<(), StrictError> {
        from_value::<ate_core::resource::TemplateSpec>(spec).map(drop)
    }
}

/// [`resource_from_value`] of a YAML document.
pub fn resource_from_yaml<K>(text: &str) -> Result<K, StrictError>
where
    K: kube::Resource<DynamicType = ()> + DeserializeOwned + StrictSpec,
{
    let type_name = std::any::type_name::<K>();
    let v: serde_json::Value =
        serde_yaml::from_str(text).map_err(|e| StrictError::Decode { type_name, detail: e.to_string() })?;
    resource_from_value(v)
}

/// [`round_trip`] for a custom resource.
pub fn resource_round_trip<K>(k: &K) -> Result<serde_json::Value, StrictError>
where
    K: kube::Resource<DynamicType = ()> + Serialize + DeserializeOwned + StrictSpec,
{
    round_trip_with(k, resource_from_value)
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
    round_trip_with(t, from_value)
}

/// Writes `t`, reads it back with `decode`, and checks the two JSON forms are equal.
fn round_trip_with<T: Serialize>(
    t: &T,
    decode: impl Fn(serde_json::Value) -> Result<T, StrictError>,
) -> Result<serde_json::Value, StrictError> {
    let type_name = std::any::type_name::<T>();
    let written =
        serde_json::to_value(t).map_err(|e| StrictError::Decode { type_name, detail: e.to_string() })?;
    let back = decode(written.clone())?;
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
