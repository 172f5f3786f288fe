//! [`NamedTensors`]: named f32 arrays in the safetensors layout (an 8-byte little-endian
//! header length, a JSON header of names, shapes and byte ranges, then the raw
//! little-endian data). The fine-tuning driver writes the trainable parameters in it for
//! every step, and checkpoints hold parameters and optimizer state in it; Python reads it
//! with `safetensors` or a few lines of numpy.

use std::collections::BTreeMap;

use datafusion::common::{Result, exec_datafusion_err, exec_err};
use serde_json::{Map, Value, json};

/// Named f32 arrays, in order, with string metadata.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NamedTensors {
    pub names: Vec<String>,
    pub shapes: Vec<Vec<usize>>,
    pub values: Vec<Vec<f32>>,
    pub metadata: BTreeMap<String, String>,
}

impl NamedTensors {
    /// Adds one array.
    pub fn push(&mut self, name: impl Into<String>, shape: Vec<usize>, values: Vec<f32>) {
        debug_assert_eq!(shape.iter().product::<usize>(), values.len());
        self.names.push(name.into());
        self.shapes.push(shape);
        self.values.push(values);
    }

    /// The array called `name`.
    pub fn get(&self, name: &str) -> Option<&[f32]> {
        let i = self.names.iter().position(|n| n == name)?;
        Some(&self.values[i])
    }

    /// Values in all arrays.
    pub fn len(&self) -> usize {
        self.values.iter().map(Vec::len).sum()
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The safetensors bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut header = Map::new();
        if !self.metadata.is_empty() {
            header.insert("__metadata__".into(), json!(self.metadata));
        }
        let mut offset = 0usize;
        for ((name, shape), values) in self.names.iter().zip(&self.shapes).zip(&self.values) {
            let end = offset + values.len() * 4;
            header.insert(
                name.clone(),
                json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, end]}),
            );
            offset = end;
        }
        let mut head = Value::Object(header).to_string().into_bytes();
        // The data starts 8-byte aligned, as the format recommends.
        while !(8 + head.len()).is_multiple_of(8) {
            head.push(b' ');
        }
        let mut out = Vec::with_capacity(8 + head.len() + offset);
        out.extend_from_slice(&(head.len() as u64).to_le_bytes());
        out.extend_from_slice(&head);
        for values in &self.values {
            for v in values {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out
    }

    /// Reads safetensors bytes (f32 arrays only); `what` names the source in errors.
    pub fn from_bytes(bytes: &[u8], what: &str) -> Result<Self> {
        let bad =
            |why: &str| exec_datafusion_err!("{what}: not a safetensors file of f32 arrays: {why}");
        if bytes.len() < 8 {
            return Err(bad("shorter than its header length"));
        }
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let data_start = 8usize.checked_add(n).filter(|&e| e <= bytes.len());
        let Some(data_start) = data_start else {
            return Err(bad("header longer than the file"));
        };
        let header: Map<String, Value> = serde_json::from_slice(&bytes[8..data_start])
            .map_err(|e| exec_datafusion_err!("{what}: bad safetensors header: {e}"))?;
        let data = &bytes[data_start..];
        let mut out = NamedTensors::default();
        let mut entries = vec![];
        for (name, v) in header {
            if name == "__metadata__" {
                if let Some(m) = v.as_object() {
                    for (k, v) in m {
                        out.metadata
                            .insert(k.clone(), v.as_str().unwrap_or_default().to_string());
                    }
                }
                continue;
            }
            if v.get("dtype").and_then(Value::as_str) != Some("F32") {
                return Err(bad(&format!("'{name}' is not F32")));
            }
            let shape: Vec<usize> = serde_json::from_value(v["shape"].clone())
                .map_err(|_| bad(&format!("'{name}' has no shape")))?;
            let range: [usize; 2] = serde_json::from_value(v["data_offsets"].clone())
                .map_err(|_| bad(&format!("'{name}' has no data_offsets")))?;
            let count: usize = shape.iter().product();
            if range[1] < range[0] || range[1] > data.len() || range[1] - range[0] != count * 4 {
                return Err(bad(&format!("'{name}' has a bad byte range")));
            }
            entries.push((range[0], name, shape, range));
        }
        // Arrays in file order (the header's JSON object is not ordered).
        entries.sort_by_key(|e| e.0);
        for (_, name, shape, [a, b]) in entries {
            let values = data[a..b]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            out.push(name, shape, values);
        }
        Ok(out)
    }

    /// Checks that `other` has the same names and shapes.
    pub fn check_same_layout(&self, other: &NamedTensors, what: &str) -> Result<()> {
        if self.names != other.names || self.shapes != other.shapes {
            return exec_err!(
                "{what}: its arrays ({} of them) do not match the model's trainable parameters ({})",
                other.names.len(),
                self.names.len()
            );
        }
        Ok(())
    }
}

/// Flattens gradients (f32, little-endian) for a result row.
pub fn f32_bytes(values: impl IntoIterator<Item = f32>) -> Vec<u8> {
    values.into_iter().flat_map(f32::to_le_bytes).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_truncated_files() {
        let mut t = NamedTensors::default();
        t.push("a.weight", vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.5]);
        t.push("a.bias", vec![2], vec![-1.0, 0.25]);
        t.metadata.insert("epoch".into(), "3".into());
        let bytes = t.to_bytes();
        assert_eq!(NamedTensors::from_bytes(&bytes, "x").unwrap(), t);
        let err = NamedTensors::from_bytes(&bytes[..bytes.len() - 4], "ckpt.safetensors")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ckpt.safetensors") && err.contains("byte range"),
            "{err}"
        );
        assert!(NamedTensors::from_bytes(&[1, 2], "y").is_err());
    }
}
