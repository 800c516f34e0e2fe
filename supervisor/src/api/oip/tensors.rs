//! The Open Inference Protocol's tensors and `sidecar.v1` LiteService's:
//! datatype names, typed `contents` as little-endian bytes, the
//! shared-memory parameters, a `ModelInferRequest` as an `InferRequest`
//! and an `InferResponse` as a `ModelInferResponse`.

use std::collections::HashMap;

use bytes::Bytes;
use sidecar_proto::inference::infer_parameter::ParameterChoice;
use sidecar_proto::inference::model_infer_response::InferOutputTensor;
use sidecar_proto::inference::{
    InferParameter, InferTensorContents, ModelInferRequest, ModelInferResponse,
};
use sidecar_proto::v1::{
    DType, InferRequest, InferResponse, OutputPlacement, SharedMemoryRef, Tensor,
};

use crate::error::Error;

/// The shared-memory parameters of an input or a requested output.
pub const SHM_REGION: &str = "shared_memory_region";
/// Offset into the region, bytes (int64).
pub const SHM_OFFSET: &str = "shared_memory_offset";
/// Bytes used from the offset (int64).
pub const SHM_BYTE_SIZE: &str = "shared_memory_byte_size";

/// Most inputs or requested outputs one call may name (a LiteRT model has
/// a handful; the worker bounds them again).
pub const MAX_TENSORS: usize = 64;

/// The protocol's name of a `DType`; `None` for UNSPECIFIED.
pub fn datatype_name(d: DType) -> Option<&'static str> {
    Some(match d {
        DType::DtypeFloat32 => "FP32",
        DType::DtypeFloat16 => "FP16",
        DType::DtypeInt8 => "INT8",
        DType::DtypeUint8 => "UINT8",
        DType::DtypeInt16 => "INT16",
        DType::DtypeInt32 => "INT32",
        DType::DtypeInt64 => "INT64",
        DType::DtypeBool => "BOOL",
        DType::DtypeUnspecified => return None,
    })
}

/// The `DType` a datatype name stands for (exact, upper case, as Triton).
pub fn dtype_of(name: &str) -> Option<DType> {
    Some(match name {
        "FP32" => DType::DtypeFloat32,
        "FP16" => DType::DtypeFloat16,
        "INT8" => DType::DtypeInt8,
        "UINT8" => DType::DtypeUint8,
        "INT16" => DType::DtypeInt16,
        "INT32" => DType::DtypeInt32,
        "INT64" => DType::DtypeInt64,
        "BOOL" => DType::DtypeBool,
        _ => return None,
    })
}

/// The wire datatype of a `DType` number (what a worker answered).
pub fn datatype_of_wire(dtype: i32) -> String {
    DType::try_from(dtype)
        .ok()
        .and_then(datatype_name)
        .map_or_else(|| format!("DTYPE_{dtype}"), str::to_owned)
}

const SUPPORTED: &str = "FP32, FP16, INT8, UINT8, INT16, INT32, INT64, BOOL";

/// The shared-memory reference in `params` (`what` names the tensor in
/// messages); `None` when `shared_memory_region` is absent.
fn shm_of(
    params: &HashMap<String, InferParameter>,
    what: &str,
) -> Result<Option<SharedMemoryRef>, Error> {
    let region = match params
        .get(SHM_REGION)
        .and_then(|p| p.parameter_choice.as_ref())
    {
        None => {
            for key in [SHM_OFFSET, SHM_BYTE_SIZE] {
                if params.contains_key(key) {
                    return Err(Error::InvalidArgument(format!(
                        "{what}: parameter {key:?} given without {SHM_REGION:?}"
                    )));
                }
            }
            return Ok(None);
        }
        Some(ParameterChoice::StringParam(s)) if !s.is_empty() => s.clone(),
        Some(other) => {
            return Err(Error::InvalidArgument(format!(
                "{what}: parameter {SHM_REGION:?} must be a non-empty string, got {other:?}"
            )));
        }
    };
    let number = |key: &str, required: bool| -> Result<u64, Error> {
        match params.get(key).and_then(|p| p.parameter_choice.as_ref()) {
            None if required => Err(Error::InvalidArgument(format!(
                "{what}: parameter {key:?} is required with {SHM_REGION:?} {region:?}"
            ))),
            None => Ok(0),
            Some(ParameterChoice::Int64Param(n)) => u64::try_from(*n).map_err(|_| {
                Error::InvalidArgument(format!(
                    "{what}: parameter {key:?} is {n}; it must be 0 or more"
                ))
            }),
            Some(ParameterChoice::Uint64Param(n)) => Ok(*n),
            Some(other) => Err(Error::InvalidArgument(format!(
                "{what}: parameter {key:?} must be an int64, got {other:?}"
            ))),
        }
    };
    let offset = number(SHM_OFFSET, false)?;
    let byte_size = number(SHM_BYTE_SIZE, true)?;
    Ok(Some(SharedMemoryRef {
        region,
        offset,
        byte_size,
    }))
}

/// The parameters that name `shm` on an answered output.
fn shm_params(shm: &SharedMemoryRef) -> HashMap<String, InferParameter> {
    let p = |c| InferParameter {
        parameter_choice: Some(c),
    };
    HashMap::from([
        (
            SHM_REGION.to_owned(),
            p(ParameterChoice::StringParam(shm.region.clone())),
        ),
        (
            SHM_OFFSET.to_owned(),
            p(ParameterChoice::Int64Param(
                i64::try_from(shm.offset).unwrap_or(i64::MAX),
            )),
        ),
        (
            SHM_BYTE_SIZE.to_owned(),
            p(ParameterChoice::Int64Param(
                i64::try_from(shm.byte_size).unwrap_or(i64::MAX),
            )),
        ),
    ])
}

/// Which typed field of `c` holds values, with its name and count; an
/// error when more than one does.
fn typed_field(
    c: &InferTensorContents,
    what: &str,
) -> Result<Option<(&'static str, usize)>, Error> {
    let fields = [
        ("bool_contents", c.bool_contents.len()),
        ("int_contents", c.int_contents.len()),
        ("int64_contents", c.int64_contents.len()),
        ("uint_contents", c.uint_contents.len()),
        ("uint64_contents", c.uint64_contents.len()),
        ("fp32_contents", c.fp32_contents.len()),
        ("fp64_contents", c.fp64_contents.len()),
        ("bytes_contents", c.bytes_contents.len()),
    ];
    let mut set = fields.into_iter().filter(|(_, n)| *n > 0);
    let first = set.next();
    if let Some((second, _)) = set.next() {
        return Err(Error::InvalidArgument(format!(
            "{what}: contents holds both {} and {second}; one typed field per input",
            first.map_or("", |f| f.0)
        )));
    }
    Ok(first)
}

/// Typed `contents` as the little-endian bytes of `dtype`; the field must
/// be the one the protocol gives that datatype.
fn contents_bytes(c: &InferTensorContents, dtype: DType, what: &str) -> Result<Vec<u8>, Error> {
    let Some((field, _)) = typed_field(c, what)? else {
        return Ok(Vec::new());
    };
    let name = datatype_name(dtype).unwrap_or("?");
    let wrong = || {
        Error::InvalidArgument(format!(
            "{what}: datatype {name} takes {}, not {field}",
            match dtype {
                DType::DtypeFloat32 => "fp32_contents",
                DType::DtypeInt8 | DType::DtypeInt16 | DType::DtypeInt32 => "int_contents",
                DType::DtypeUint8 => "uint_contents",
                DType::DtypeInt64 => "int64_contents",
                DType::DtypeBool => "bool_contents",
                _ => "raw_input_contents only (no typed field carries it)",
            }
        ))
    };
    let narrow = |bits: u32, v: i64| -> Result<i64, Error> {
        let (lo, hi) = if dtype == DType::DtypeUint8 {
            (0, (1i64 << bits) - 1)
        } else {
            (-(1i64 << (bits - 1)), (1i64 << (bits - 1)) - 1)
        };
        if v < lo || v > hi {
            return Err(Error::InvalidArgument(format!(
                "{what}: value {v} does not fit {name} ({lo}..={hi})"
            )));
        }
        Ok(v)
    };
    let mut out = Vec::new();
    match (dtype, field) {
        (DType::DtypeFloat32, "fp32_contents") => {
            out.extend(c.fp32_contents.iter().flat_map(|v| v.to_le_bytes()));
        }
        (DType::DtypeInt8, "int_contents") => {
            for v in &c.int_contents {
                out.push(narrow(8, i64::from(*v))? as i8 as u8);
            }
        }
        (DType::DtypeInt16, "int_contents") => {
            for v in &c.int_contents {
                out.extend((narrow(16, i64::from(*v))? as i16).to_le_bytes());
            }
        }
        (DType::DtypeInt32, "int_contents") => {
            out.extend(c.int_contents.iter().flat_map(|v| v.to_le_bytes()));
        }
        (DType::DtypeUint8, "uint_contents") => {
            for v in &c.uint_contents {
                out.push(narrow(8, i64::from(*v))? as u8);
            }
        }
        (DType::DtypeInt64, "int64_contents") => {
            out.extend(c.int64_contents.iter().flat_map(|v| v.to_le_bytes()));
        }
        (DType::DtypeBool, "bool_contents") => {
            out.extend(c.bool_contents.iter().map(|b| u8::from(*b)))
        }
        _ => return Err(wrong()),
    }
    Ok(out)
}

/// The `InferRequest` a `ModelInferRequest` asks for: inputs from
/// `raw_input_contents` (one per input without shared memory, in order)
/// or from typed `contents` (never both in one call), shared-memory
/// parameters as `Tensor.shm` and `OutputPlacement`s, the requested
/// outputs' names. Request parameters are ignored, as Triton passes
/// them to its backend (none of which this server has).
pub fn infer_request(req: ModelInferRequest) -> Result<InferRequest, Error> {
    if req.inputs.len() > MAX_TENSORS || req.outputs.len() > MAX_TENSORS {
        return Err(Error::InvalidArgument(format!(
            "the request names {} inputs and {} outputs; at most {MAX_TENSORS} of each",
            req.inputs.len(),
            req.outputs.len()
        )));
    }
    let typed = req.inputs.iter().any(|i| {
        i.contents
            .as_ref()
            .is_some_and(|c| typed_field(c, "").ok().flatten().is_some())
    });
    if typed && !req.raw_input_contents.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "the request carries both raw_input_contents ({} entries) and typed contents; \
             send every input one way",
            req.raw_input_contents.len()
        )));
    }
    let mut raw = req.raw_input_contents.into_iter();
    let mut raw_used = 0usize;
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for input in req.inputs {
        let what = format!("input {:?}", input.name);
        let dtype = dtype_of(&input.datatype).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{what}: datatype {:?} is not supported; supported: {SUPPORTED}",
                input.datatype
            ))
        })?;
        let shm = shm_of(&input.parameters, &what)?;
        let data = match (&shm, &input.contents, typed) {
            (Some(_), c, _) => {
                if c.as_ref()
                    .is_some_and(|c| typed_field(c, &what).ok().flatten().is_some())
                {
                    return Err(Error::InvalidArgument(format!(
                        "{what}: both shared memory and contents given; one source per input"
                    )));
                }
                Bytes::new()
            }
            (None, Some(c), true) => Bytes::from(contents_bytes(c, dtype, &what)?),
            (None, _, _) => {
                raw_used += 1;
                raw.next().ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "{what}: no data: raw_input_contents has {} entries for the inputs \
                         without shared memory, and typed contents are empty",
                        raw_used - 1
                    ))
                })?
            }
        };
        inputs.push(Tensor {
            name: input.name,
            dtype: dtype as i32,
            shape: input.shape,
            data,
            shm,
        });
    }
    let extra = raw.len();
    if extra > 0 {
        return Err(Error::InvalidArgument(format!(
            "raw_input_contents has {} entries for {raw_used} inputs without shared memory",
            raw_used + extra
        )));
    }
    let mut outputs = Vec::with_capacity(req.outputs.len());
    let mut output_placements = Vec::new();
    for o in req.outputs {
        if let Some(shm) = shm_of(&o.parameters, &format!("requested output {:?}", o.name))? {
            output_placements.push(OutputPlacement {
                name: o.name.clone(),
                shm: Some(shm),
            });
        }
        outputs.push(o.name);
    }
    Ok(InferRequest {
        model_id: req.model_name,
        inputs,
        outputs,
        output_placements,
    })
}

/// The `ModelInferResponse` of an `InferResponse`: one output and one raw
/// content per tensor, in order; an output written into shared memory
/// has empty raw content and carries its region's parameters.
pub fn infer_response(
    model: String,
    version: String,
    id: String,
    answer: InferResponse,
) -> ModelInferResponse {
    let mut outputs = Vec::with_capacity(answer.outputs.len());
    let mut raw = Vec::with_capacity(answer.outputs.len());
    for t in answer.outputs {
        outputs.push(InferOutputTensor {
            name: t.name,
            datatype: datatype_of_wire(t.dtype),
            shape: t.shape,
            parameters: t.shm.as_ref().map(shm_params).unwrap_or_default(),
            contents: None,
        });
        raw.push(if t.shm.is_some() {
            Bytes::new()
        } else {
            t.data
        });
    }
    ModelInferResponse {
        model_name: model,
        model_version: version,
        id,
        parameters: HashMap::new(),
        outputs,
        raw_output_contents: raw,
    }
}
