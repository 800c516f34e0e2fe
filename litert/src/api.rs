//! The C functions of `libLiteRt.so` this crate uses, resolved once at
//! load time, and the struct layouts they exchange.
//!
//! Only the functions the workers need are declared, from the 2.x headers
//! (`litert/c/litert_*.h`): since 2.2 `LiteRtCreateModelFromFile` takes the
//! environment first. Struct layouts are the ABI-stable ones the headers
//! assert (`LiteRtRankedTensorType` is 72 bytes, its layout at offset 4).
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void};
use std::path::Path;

use crate::LiteError;

pub(crate) type Status = c_int;
pub(crate) type Handle = *mut c_void;
pub(crate) type ParamIndex = usize;

/// Most dimensions of a ranked tensor.
pub const MAX_RANK: usize = 8;

/// `LiteRtLayout`: `rank:7`, `has_strides:1` bit fields in one 32-bit unit,
/// then dimensions and strides.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawLayout {
    pub(crate) bits: u32,
    pub(crate) dimensions: [i32; MAX_RANK],
    pub(crate) strides: [u32; MAX_RANK],
}

/// `LiteRtRankedTensorType`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawRankedType {
    pub(crate) element_type: c_int,
    pub(crate) layout: RawLayout,
}

const _: () = assert!(std::mem::size_of::<RawRankedType>() == 72);

/// `LiteRtQuantizationPerTensor`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RawPerTensor {
    pub(crate) scale: f32,
    pub(crate) zero_point: i64,
}

/// `LiteRtQuantizationPerChannel`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawPerChannel {
    pub(crate) quantized_dimension: i32,
    pub(crate) num_channels: u64,
    pub(crate) scales: *mut f32,
    pub(crate) zero_points: *mut i64,
}

pub(crate) const QUANT_PER_TENSOR: c_int = 1;
pub(crate) const QUANT_PER_CHANNEL: c_int = 2;
pub(crate) const LOCK_READ: c_int = 0;
pub(crate) const LOCK_WRITE: c_int = 1;

/// The functions used, resolved once from the library.
pub(crate) struct Api {
    pub(crate) _lib: libloading::Library,
    pub(crate) create_environment:
        unsafe extern "C" fn(c_int, *const c_void, *mut Handle) -> Status,
    pub(crate) destroy_environment: unsafe extern "C" fn(Handle),
    pub(crate) create_model_from_file:
        unsafe extern "C" fn(Handle, *const c_char, *mut Handle) -> Status,
    pub(crate) destroy_model: unsafe extern "C" fn(Handle),
    pub(crate) num_signatures: unsafe extern "C" fn(Handle, *mut ParamIndex) -> Status,
    pub(crate) model_signature: unsafe extern "C" fn(Handle, ParamIndex, *mut Handle) -> Status,
    pub(crate) signature_key: unsafe extern "C" fn(Handle, *mut *const c_char) -> Status,
    pub(crate) num_inputs: unsafe extern "C" fn(Handle, *mut ParamIndex) -> Status,
    pub(crate) num_outputs: unsafe extern "C" fn(Handle, *mut ParamIndex) -> Status,
    pub(crate) input_name: unsafe extern "C" fn(Handle, ParamIndex, *mut *const c_char) -> Status,
    pub(crate) output_name: unsafe extern "C" fn(Handle, ParamIndex, *mut *const c_char) -> Status,
    pub(crate) input_tensor: unsafe extern "C" fn(Handle, ParamIndex, *mut Handle) -> Status,
    pub(crate) output_tensor: unsafe extern "C" fn(Handle, ParamIndex, *mut Handle) -> Status,
    pub(crate) ranked_type: unsafe extern "C" fn(Handle, *mut RawRankedType) -> Status,
    pub(crate) quantization_type: unsafe extern "C" fn(Handle, *mut c_int) -> Status,
    pub(crate) per_tensor: unsafe extern "C" fn(Handle, *mut RawPerTensor) -> Status,
    pub(crate) per_channel: unsafe extern "C" fn(Handle, *mut RawPerChannel) -> Status,
    pub(crate) create_options: unsafe extern "C" fn(*mut Handle) -> Status,
    pub(crate) destroy_options: unsafe extern "C" fn(Handle),
    pub(crate) set_accelerators: unsafe extern "C" fn(Handle, c_int) -> Status,
    pub(crate) create_opaque_options: unsafe extern "C" fn(
        *const c_char,
        *mut c_void,
        Option<unsafe extern "C" fn(*mut c_void)>,
        *mut Handle,
    ) -> Status,
    pub(crate) add_opaque_options: unsafe extern "C" fn(Handle, Handle) -> Status,
    pub(crate) create_compiled_model:
        unsafe extern "C" fn(Handle, Handle, Handle, *mut Handle) -> Status,
    pub(crate) destroy_compiled_model: unsafe extern "C" fn(Handle),
    pub(crate) input_requirements:
        unsafe extern "C" fn(Handle, ParamIndex, ParamIndex, *mut Handle) -> Status,
    pub(crate) output_requirements:
        unsafe extern "C" fn(Handle, ParamIndex, ParamIndex, *mut Handle) -> Status,
    pub(crate) create_managed_buffer:
        unsafe extern "C" fn(Handle, *const RawRankedType, Handle, *mut Handle) -> Status,
    pub(crate) destroy_buffer: unsafe extern "C" fn(Handle),
    pub(crate) packed_size: unsafe extern "C" fn(Handle, *mut usize) -> Status,
    pub(crate) lock_buffer: unsafe extern "C" fn(Handle, *mut *mut c_void, c_int) -> Status,
    pub(crate) unlock_buffer: unsafe extern "C" fn(Handle) -> Status,
    pub(crate) run:
        unsafe extern "C" fn(Handle, ParamIndex, usize, *mut Handle, usize, *mut Handle) -> Status,
}

/// Names of LiteRT status codes (`litert_common.h`).
fn status_name(s: Status) -> &'static str {
    match s {
        1 => "invalid argument",
        2 => "memory allocation failure",
        3 => "runtime failure",
        4 => "missing input tensor",
        5 => "unsupported",
        6 => "not found",
        7 => "timeout expired",
        8 => "wrong version",
        9 => "unknown error",
        10 => "already exists",
        100 => "cancelled",
        500 => "file I/O error",
        501 => "invalid flatbuffer",
        502 => "dynamic loading error",
        503 => "serialization error",
        504 => "compilation error",
        1000 => "index out of bounds",
        _ => "error",
    }
}

/// Turns a status into a result naming the call.
pub(crate) fn check(status: Status, what: &str) -> Result<(), LiteError> {
    if status == 0 {
        Ok(())
    } else {
        Err(LiteError::Runtime(format!(
            "{what}: LiteRT status {status} ({})",
            status_name(status)
        )))
    }
}

/// Resolves one symbol as a function pointer of type `T`.
///
/// # Safety
/// `T` must be the function's true C signature.
unsafe fn symbol<T: Copy>(lib: &libloading::Library, name: &str) -> Result<T, LiteError> {
    // SAFETY: the caller guarantees `T` matches the symbol's C signature;
    // the pointer is used only while `lib` stays loaded (it lives in `Api`).
    let sym = unsafe { lib.get::<T>(name.as_bytes()) };
    sym.map(|s| *s)
        .map_err(|e| LiteError::Runtime(format!("libLiteRt.so lacks {name}: {e}")))
}

impl Api {
    pub(crate) fn load(path: &Path) -> Result<Api, LiteError> {
        // SAFETY: loading runs the library's initialisers; libLiteRt.so is
        // the vendor's runtime library, loaded once per process.
        let lib = unsafe { libloading::Library::new(path) }.map_err(|e| {
            LiteError::Runtime(format!(
                "cannot load the LiteRT runtime {}: {e}",
                path.display()
            ))
        })?;
        macro_rules! f {
            ($name:literal) => {
                // SAFETY: each field's type is the C signature of the named
                // function in the LiteRT 2.x headers.
                unsafe { symbol(&lib, $name)? }
            };
        }
        Ok(Api {
            create_environment: f!("LiteRtCreateEnvironment"),
            destroy_environment: f!("LiteRtDestroyEnvironment"),
            create_model_from_file: f!("LiteRtCreateModelFromFile"),
            destroy_model: f!("LiteRtDestroyModel"),
            num_signatures: f!("LiteRtGetNumModelSignatures"),
            model_signature: f!("LiteRtGetModelSignature"),
            signature_key: f!("LiteRtGetSignatureKey"),
            num_inputs: f!("LiteRtGetNumSignatureInputs"),
            num_outputs: f!("LiteRtGetNumSignatureOutputs"),
            input_name: f!("LiteRtGetSignatureInputName"),
            output_name: f!("LiteRtGetSignatureOutputName"),
            input_tensor: f!("LiteRtGetSignatureInputTensorByIndex"),
            output_tensor: f!("LiteRtGetSignatureOutputTensorByIndex"),
            ranked_type: f!("LiteRtGetRankedTensorType"),
            quantization_type: f!("LiteRtGetQuantizationTypeId"),
            per_tensor: f!("LiteRtGetPerTensorQuantization"),
            per_channel: f!("LiteRtGetPerChannelQuantization"),
            create_options: f!("LiteRtCreateOptions"),
            destroy_options: f!("LiteRtDestroyOptions"),
            set_accelerators: f!("LiteRtSetOptionsHardwareAccelerators"),
            create_opaque_options: f!("LiteRtCreateOpaqueOptions"),
            add_opaque_options: f!("LiteRtAddOpaqueOptions"),
            create_compiled_model: f!("LiteRtCreateCompiledModel"),
            destroy_compiled_model: f!("LiteRtDestroyCompiledModel"),
            input_requirements: f!("LiteRtGetCompiledModelInputBufferRequirements"),
            output_requirements: f!("LiteRtGetCompiledModelOutputBufferRequirements"),
            create_managed_buffer: f!("LiteRtCreateManagedTensorBufferFromRequirements"),
            destroy_buffer: f!("LiteRtDestroyTensorBuffer"),
            packed_size: f!("LiteRtGetTensorBufferPackedSize"),
            lock_buffer: f!("LiteRtLockTensorBuffer"),
            unlock_buffer: f!("LiteRtUnlockTensorBuffer"),
            run: f!("LiteRtRunCompiledModel"),
            _lib: lib,
        })
    }
}
