//! A pipeline's companion model: compiled once per worker, its tensors
//! checked against the role it was given (`VisionOptions.pipeline.*`), so
//! that a file that does not fit is INVALID_ARGUMENT at LoadModel naming
//! the field and the shapes, never a wrong answer later.

use std::path::Path;
use std::sync::Arc;

use litert::{Compiled, HW_CPU, Runtime, TensorDesc};
use opencv::core::Mat;
use worker_runtime::WorkerError;

use super::roi::{Crop, Region, TensorSpec, to_tensor};
use crate::error::lite_error;

/// LiteRT's element type of float32 tensors.
const FLOAT32: i32 = 1;

/// A compiled companion model and the field that named it.
pub struct Model {
    /// The compiled model.
    pub compiled: Compiled,
    /// The option that named it (`pipeline.palm_detection`).
    pub field: &'static str,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("field", &self.field)
            .finish_non_exhaustive()
    }
}

fn describe(d: &TensorDesc) -> String {
    let t = if d.element_type == FLOAT32 {
        "float32".to_owned()
    } else {
        format!("type {}", d.element_type)
    };
    format!("{t} {:?}", d.shape)
}

impl Model {
    /// Compiles `path` for the CPU. `field` names it in errors; `role`
    /// says what it should be ("a palm detector"); `input` is the one
    /// float32 input it must take and `outputs` the float32 outputs it
    /// must give, in order.
    pub fn load(
        rt: &Arc<Runtime>,
        path: &Path,
        threads: u32,
        field: &'static str,
        role: &str,
        shapes: (&[i32], &[&[i32]]),
    ) -> Result<Model, WorkerError> {
        let (input, outputs) = shapes;
        let compiled = rt
            .model(path)
            .and_then(|m| m.compile(HW_CPU, threads.max(1)))
            .map_err(|e| {
                WorkerError::invalid(format!("{field}: LiteRT cannot load it as {role} ({e})"))
            })?;
        let fits = |d: &TensorDesc, want: &[i32]| d.element_type == FLOAT32 && d.shape == want;
        let ins = &compiled.input_desc;
        if ins.len() != 1 || !fits(&ins[0], input) {
            return Err(WorkerError::invalid(format!(
                "{field}: the model's inputs are [{}]; {role} takes one float32 {input:?}",
                ins.iter().map(describe).collect::<Vec<_>>().join(", ")
            )));
        }
        let outs = &compiled.output_desc;
        if outs.len() != outputs.len() || outs.iter().zip(outputs).any(|(d, w)| !fits(d, w)) {
            return Err(WorkerError::invalid(format!(
                "{field}: the model's outputs are [{}]; {role} gives float32 {outputs:?}",
                outs.iter().map(describe).collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(Model { compiled, field })
    }

    /// Crops `region` of `frame` into the input tensor as `spec` says.
    pub fn input(
        &mut self,
        frame: &Mat,
        region: &Region,
        spec: &TensorSpec,
    ) -> Result<Crop, WorkerError> {
        let mut crop = Err(WorkerError::internal("the input buffer was not written"));
        self.compiled
            .write_input(0, |buf| crop = to_tensor(frame, region, spec, buf))
            .map_err(lite_error)?;
        crop
    }

    /// Runs the model.
    pub fn run(&mut self) -> Result<(), WorkerError> {
        self.compiled.run().map_err(lite_error)
    }

    /// Output `i` as floats.
    pub fn output(&self, i: usize) -> Result<Vec<f32>, WorkerError> {
        self.compiled
            .read_output(i, |b| {
                b.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            })
            .map_err(lite_error)
    }
}
