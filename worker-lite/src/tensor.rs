//! Tensor types and shapes: LiteRT's element types against the API's
//! `DType`, and the checks an input gets before it reaches the runtime.

use litert::{ElementType, TensorDesc};
use sidecar_proto::v1::{DType, Quantization, SharedMemoryRef, TensorInfo};
use worker_runtime::WorkerError;

/// The API dtype and element size of a LiteRT element type, if served.
pub fn dtype_of(t: ElementType) -> Option<(DType, usize)> {
    Some(match t {
        1 => (DType::DtypeFloat32, 4),
        2 => (DType::DtypeInt32, 4),
        3 => (DType::DtypeUint8, 1),
        4 => (DType::DtypeInt64, 8),
        6 => (DType::DtypeBool, 1),
        7 => (DType::DtypeInt16, 2),
        9 => (DType::DtypeInt8, 1),
        10 => (DType::DtypeFloat16, 2),
        _ => return None,
    })
}

/// Lower-case name of an API dtype for messages ("float32").
pub fn dtype_name(d: i32) -> String {
    DType::try_from(d).map_or_else(
        |_| format!("dtype {d}"),
        |d| {
            d.as_str_name()
                .trim_start_matches("DTYPE_")
                .to_ascii_lowercase()
        },
    )
}

/// Bytes of a tensor of this shape, or None when a dimension is dynamic.
pub fn byte_size(shape: &[i32], elem: usize) -> Option<usize> {
    shape.iter().try_fold(elem, |acc, &d| {
        (d >= 0).then(|| acc.checked_mul(d as usize)).flatten()
    })
}

/// The API description of a model tensor.
pub fn info(d: &TensorDesc) -> TensorInfo {
    let (dtype, elem) = dtype_of(d.element_type).unwrap_or((DType::DtypeUnspecified, 0));
    TensorInfo {
        name: d.name.clone(),
        dtype: dtype as i32,
        shape: d.shape.iter().map(|&x| i64::from(x)).collect(),
        quantization: d.quant.as_ref().map(|q| Quantization {
            scale: q.scale.clone(),
            zero_point: q.zero_point.clone(),
            quantized_dimension: q.dimension,
        }),
        byte_size: byte_size(&d.shape, elem).unwrap_or(0) as u64,
    }
}

/// Checks that every model tensor has a type this worker serves and a
/// static shape (dynamic shapes would need resizing, not offered).
pub fn check_servable(d: &TensorDesc, what: &str) -> Result<(), String> {
    let Some((_, elem)) = dtype_of(d.element_type) else {
        return Err(format!(
            "{what} {:?} has LiteRT element type {}, which the API cannot carry",
            d.name, d.element_type
        ));
    };
    if byte_size(&d.shape, elem).is_none() {
        return Err(format!(
            "{what} {:?} has a dynamic shape {:?}; only static shapes are served",
            d.name, d.shape
        ));
    }
    Ok(())
}

/// An input as the request gives it, borrowed from the request bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct InputRef<'a> {
    /// Tensor name.
    pub name: &'a str,
    /// API dtype number.
    pub dtype: i32,
    /// Dimensions.
    pub shape: Vec<i64>,
    /// Raw little-endian bytes (empty when `shm` is set).
    pub data: &'a [u8],
    /// The bytes are in a shared-memory region instead.
    pub shm: Option<SharedMemoryRef>,
}

/// Matches a request's inputs to the model's, in model order: every model
/// input exactly once, with the model's dtype, shape and byte length.
/// `at` prefixes messages ("sets[3]." for a batch).
pub fn match_inputs<'r, 'a>(
    model: &[TensorDesc],
    given: &'r [InputRef<'a>],
    at: &str,
) -> Result<Vec<&'r InputRef<'a>>, WorkerError> {
    for g in given {
        if !model.iter().any(|m| m.name == g.name) {
            let names: Vec<&str> = model.iter().map(|m| m.name.as_str()).collect();
            return Err(WorkerError::invalid(format!(
                "{at}inputs: unknown tensor {:?}; the model's inputs are {names:?}",
                g.name
            )));
        }
        if given.iter().filter(|o| o.name == g.name).count() > 1 {
            return Err(WorkerError::invalid(format!(
                "{at}inputs: tensor {:?} given more than once",
                g.name
            )));
        }
    }
    model
        .iter()
        .map(|m| {
            let Some(g) = given.iter().find(|g| g.name == m.name) else {
                return Err(WorkerError::invalid(format!(
                    "{at}inputs: missing tensor {:?} (dtype {}, shape {:?})",
                    m.name,
                    dtype_name(dtype_of(m.element_type).map_or(0, |d| d.0 as i32)),
                    m.shape
                )));
            };
            let (dtype, elem) = dtype_of(m.element_type).unwrap_or((DType::DtypeUnspecified, 0));
            if g.dtype != dtype as i32 {
                return Err(WorkerError::invalid(format!(
                    "{at}inputs: tensor {:?} expects dtype {}, got {}",
                    m.name,
                    dtype_name(dtype as i32),
                    dtype_name(g.dtype)
                )));
            }
            let want: Vec<i64> = m.shape.iter().map(|&x| i64::from(x)).collect();
            if g.shape != want {
                return Err(WorkerError::invalid(format!(
                    "{at}inputs: tensor {:?} expects shape {want:?}, got {:?}",
                    m.name, g.shape
                )));
            }
            let bytes = byte_size(&m.shape, elem).unwrap_or(0);
            if let Some(r) = &g.shm {
                if !g.data.is_empty() {
                    return Err(WorkerError::invalid(format!(
                        "{at}inputs: tensor {:?} has both data ({} bytes) and shm; give one",
                        m.name,
                        g.data.len()
                    )));
                }
                if r.byte_size != bytes as u64 {
                    return Err(WorkerError::invalid(format!(
                        "{at}inputs: tensor {:?} of shape {want:?} and dtype {} is {bytes} bytes, shm.byte_size is {}",
                        m.name,
                        dtype_name(dtype as i32),
                        r.byte_size
                    )));
                }
                return Ok(g);
            }
            if g.data.len() != bytes {
                return Err(WorkerError::invalid(format!(
                    "{at}inputs: tensor {:?} of shape {want:?} and dtype {} is {bytes} bytes, got {}",
                    m.name,
                    dtype_name(dtype as i32),
                    g.data.len()
                )));
            }
            Ok(g)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_and_dynamic_shapes() {
        assert_eq!(byte_size(&[1, 128, 128, 3], 4), Some(196_608));
        assert_eq!(byte_size(&[], 4), Some(4), "a scalar");
        assert_eq!(byte_size(&[1, -1, 3], 4), None);
    }

    #[test]
    fn dtype_names() {
        assert_eq!(dtype_name(DType::DtypeFloat32 as i32), "float32");
        assert_eq!(dtype_name(DType::DtypeUint8 as i32), "uint8");
        assert_eq!(dtype_name(99), "dtype 99");
    }
}
