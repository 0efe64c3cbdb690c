//! `correlation.id_shape` as config values: which ID shapes the key accepts, and how the choice rides
//! inside the `correlation.keys` list so every reader of the keys applies it. What each shape accepts
//! is `crate::correlation`'s business; config only names the choices.

/// Marker in a keys list for `correlation.id_shape = any`. It cannot be a real key: keys are read
/// from comments as letters, digits, `_`, `-`, `.` and `%` only.
pub const ANY_SHAPE_KEY: &str = "*any_shape";

/// The shapes `correlation.id_shape` accepts, default first.
pub const ID_SHAPES: &[&str] = &["php", "any"];

/// `keys` (from `correlation.keys`) carrying the `correlation.id_shape` choice (`php` or `any`).
pub fn keys_with_shape(mut keys: Vec<String>, shape: &str) -> Vec<String> {
    keys.retain(|k| k != ANY_SHAPE_KEY);
    if shape == "any" {
        keys.push(ANY_SHAPE_KEY.to_string());
    }
    keys
}
