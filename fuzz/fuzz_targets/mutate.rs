//! The webhook's `mutate`: any pod the API server could send (JSON the Pod type accepts), with any
//! annotations and an optional ConfigMap text after a NUL byte, gives a patch, "nothing to do" or a refusal
//! message, never a panic; a patch is a JSON array of operations.
#![no_main]
use k8s_openapi::api::core::v1::Pod;
use libfuzzer_sys::fuzz_target;
use pgwarden::k8s::inject::{config::InjectConfig, mutate};

fuzz_target!(|data: &[u8]| {
    let (pod, configmap) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], std::str::from_utf8(&data[i + 1..]).ok()),
        None => (data, None),
    };
    let Ok(pod) = serde_json::from_slice::<Pod>(pod) else { return };
    let cfg: InjectConfig = serde_json::from_str("{}").expect("defaults");
    if let Ok(Some(patch)) = mutate(&pod, &cfg, configmap) {
        for op in &patch {
            assert!(op.get("op").is_some() && op.get("path").is_some(), "{op}");
        }
    }
});
