use sidecar_proto::inference::InferTensorContents;
use sidecar_proto::inference::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};

use std::collections::HashMap;

use sidecar_proto::inference::infer_parameter::ParameterChoice;
use sidecar_proto::inference::{InferParameter, ModelInferRequest};
use sidecar_proto::v1::{DType, InferResponse, SharedMemoryRef, Tensor};

use super::tensors::*;
use crate::error::Error;

fn input(name: &str, datatype: &str, contents: Option<InferTensorContents>) -> InferInputTensor {
    InferInputTensor {
        name: name.into(),
        datatype: datatype.into(),
        shape: vec![1, 2],
        parameters: HashMap::new(),
        contents,
    }
}

fn param(c: ParameterChoice) -> InferParameter {
    InferParameter {
        parameter_choice: Some(c),
    }
}

#[test]
fn datatypes_round_trip() {
    for d in [
        DType::DtypeFloat32,
        DType::DtypeFloat16,
        DType::DtypeInt8,
        DType::DtypeUint8,
        DType::DtypeInt16,
        DType::DtypeInt32,
        DType::DtypeInt64,
        DType::DtypeBool,
    ] {
        let name = datatype_name(d).expect("named");
        assert_eq!(dtype_of(name), Some(d));
        assert_eq!(datatype_of_wire(d as i32), name);
    }
    assert_eq!(dtype_of("fp32"), None);
    assert_eq!(dtype_of("FP64"), None);
    assert_eq!(datatype_name(DType::DtypeUnspecified), None);
}

#[test]
fn raw_and_typed_contents_become_little_endian_bytes() {
    let raw = infer_request(ModelInferRequest {
        model_name: "m".into(),
        inputs: vec![input("a", "FP32", None), input("b", "INT8", None)],
        raw_input_contents: vec![vec![1u8, 2, 3, 4].into(), vec![5u8].into()],
        outputs: vec![InferRequestedOutputTensor {
            name: "y".into(),
            parameters: HashMap::new(),
        }],
        ..Default::default()
    })
    .expect("raw");
    assert_eq!(raw.model_id, "m");
    assert_eq!(raw.inputs[0].data, vec![1, 2, 3, 4]);
    assert_eq!(raw.inputs[1].data, vec![5]);
    assert_eq!(raw.inputs[1].dtype, DType::DtypeInt8 as i32);
    assert_eq!(raw.outputs, vec!["y".to_owned()]);
    assert!(raw.output_placements.is_empty());

    let typed = infer_request(ModelInferRequest {
        inputs: vec![
            input(
                "f",
                "FP32",
                Some(InferTensorContents {
                    fp32_contents: vec![1.5, -2.0],
                    ..Default::default()
                }),
            ),
            input(
                "i",
                "INT16",
                Some(InferTensorContents {
                    int_contents: vec![-2, 300],
                    ..Default::default()
                }),
            ),
            input(
                "b",
                "BOOL",
                Some(InferTensorContents {
                    bool_contents: vec![true, false],
                    ..Default::default()
                }),
            ),
        ],
        ..Default::default()
    })
    .expect("typed");
    let f: Vec<u8> = [1.5f32, -2.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    assert_eq!(typed.inputs[0].data, f);
    let i: Vec<u8> = [-2i16, 300].iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(typed.inputs[1].data, i);
    assert_eq!(typed.inputs[2].data, vec![1, 0]);
}

#[test]
fn bad_contents_are_refused_naming_the_input() {
    let err = |req: ModelInferRequest| match infer_request(req) {
        Err(Error::InvalidArgument(m)) => m,
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    };
    let fp64 = InferTensorContents {
        fp64_contents: vec![1.0],
        ..Default::default()
    };
    let m = err(ModelInferRequest {
        inputs: vec![input("x", "FP32", Some(fp64))],
        ..Default::default()
    });
    assert!(
        m.contains("input \"x\"") && m.contains("fp64_contents"),
        "{m}"
    );
    let m = err(ModelInferRequest {
        inputs: vec![input("x", "FP64", None)],
        raw_input_contents: vec![vec![0u8; 8].into()],
        ..Default::default()
    });
    assert!(m.contains("\"FP64\"") && m.contains("FP32"), "{m}");
    let mixed = InferTensorContents {
        fp32_contents: vec![1.0],
        ..Default::default()
    };
    let m = err(ModelInferRequest {
        inputs: vec![input("x", "FP32", Some(mixed))],
        raw_input_contents: vec![vec![0u8; 4].into()],
        ..Default::default()
    });
    assert!(m.contains("both raw_input_contents"), "{m}");
    let big = InferTensorContents {
        int_contents: vec![200],
        ..Default::default()
    };
    let m = err(ModelInferRequest {
        inputs: vec![input("q", "INT8", Some(big))],
        ..Default::default()
    });
    assert!(m.contains("200") && m.contains("INT8"), "{m}");
    let m = err(ModelInferRequest {
        inputs: vec![input("a", "FP32", None)],
        raw_input_contents: vec![vec![0u8; 4].into(), vec![0u8; 4].into()],
        ..Default::default()
    });
    assert!(m.contains("2 entries for 1 inputs"), "{m}");
    let m = err(ModelInferRequest {
        inputs: vec![input("a", "FP32", None), input("b", "FP32", None)],
        raw_input_contents: vec![vec![0u8; 4].into()],
        ..Default::default()
    });
    assert!(m.contains("input \"b\""), "{m}");
}

#[test]
fn shared_memory_parameters_map_both_ways() {
    let mut shm = input("a", "FP32", None);
    shm.parameters = HashMap::from([
        (
            SHM_REGION.into(),
            param(ParameterChoice::StringParam("r".into())),
        ),
        (SHM_OFFSET.into(), param(ParameterChoice::Int64Param(16))),
        (SHM_BYTE_SIZE.into(), param(ParameterChoice::Int64Param(8))),
    ]);
    let out = InferRequestedOutputTensor {
        name: "y".into(),
        parameters: HashMap::from([
            (
                SHM_REGION.into(),
                param(ParameterChoice::StringParam("o".into())),
            ),
            (SHM_BYTE_SIZE.into(), param(ParameterChoice::Int64Param(4))),
        ]),
    };
    let req = infer_request(ModelInferRequest {
        inputs: vec![shm, input("b", "FP32", None)],
        outputs: vec![out],
        raw_input_contents: vec![vec![9u8; 8].into()],
        ..Default::default()
    })
    .expect("shm");
    let r = req.inputs[0].shm.as_ref().expect("input shm");
    assert_eq!((r.region.as_str(), r.offset, r.byte_size), ("r", 16, 8));
    assert!(req.inputs[0].data.is_empty());
    assert_eq!(req.inputs[1].data, vec![9; 8], "the raw entry goes to b");
    let p = &req.output_placements[0];
    let o = p.shm.as_ref().expect("placement");
    assert_eq!(
        (p.name.as_str(), o.region.as_str(), o.offset, o.byte_size),
        ("y", "o", 0, 4)
    );

    let mut neg = input("a", "FP32", None);
    neg.parameters = HashMap::from([
        (
            SHM_REGION.into(),
            param(ParameterChoice::StringParam("r".into())),
        ),
        (SHM_BYTE_SIZE.into(), param(ParameterChoice::Int64Param(-1))),
    ]);
    match infer_request(ModelInferRequest {
        inputs: vec![neg],
        ..Default::default()
    }) {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("-1"), "{m}"),
        other => panic!("{other:?}"),
    }

    let answer = InferResponse {
        outputs: vec![
            Tensor {
                name: "y".into(),
                dtype: DType::DtypeFloat32 as i32,
                shape: vec![1],
                data: Default::default(),
                shm: Some(SharedMemoryRef {
                    region: "o".into(),
                    offset: 0,
                    byte_size: 4,
                }),
            },
            Tensor {
                name: "z".into(),
                dtype: DType::DtypeUint8 as i32,
                shape: vec![2],
                data: vec![7u8, 8].into(),
                shm: None,
            },
        ],
        timings: None,
    };
    let r = infer_response("m".into(), "1".into(), "id-1".into(), answer);
    assert_eq!((r.model_version.as_str(), r.id.as_str()), ("1", "id-1"));
    assert_eq!(
        r.raw_output_contents,
        vec![bytes::Bytes::new(), bytes::Bytes::from(vec![7u8, 8])]
    );
    assert_eq!(r.outputs[0].datatype, "FP32");
    assert_eq!(r.outputs[1].datatype, "UINT8");
    assert!(r.outputs[0].parameters.contains_key(SHM_REGION));
    assert!(r.outputs[1].parameters.is_empty());
}
