//! Upload a model file into the store with progress, load it, watch its
//! state until READY, call it, then unload and delete it (unless
//! `--keep`). Changing the store or the catalog needs the `manage` scope:
//! the control socket (`--target unix:/…/control.sock`) or such a token.

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use sidecar_proto::v1::lite_service_client::LiteServiceClient;
use sidecar_proto::v1::model_service_client::ModelServiceClient;
use sidecar_proto::v1::{
    DeleteFileRequest, GetModelInfoRequest, GetModelRequest, LiteOptions, LoadModelRequest,
    ModelFamily, ModelState, PutFileHeader, PutFileRequest, UnloadModelRequest, load_model_request,
    put_file_request,
};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::conn::{Call, connect, show};

const CHUNK: usize = 64 << 10;

#[derive(Debug, clap::Args)]
pub(crate) struct UploadArgs {
    /// The file to upload.
    #[arg(long)]
    file: std::path::PathBuf,
    /// Path in the store (default uploads/<file name>).
    #[arg(long)]
    dest: Option<String>,
    /// text, lite or vision.
    #[arg(long)]
    family: String,
    #[arg(long)]
    model_id: String,
    /// API address to call the loaded model on (lite models).
    #[arg(long)]
    api: Option<String>,
    /// Lite with --api: swap in a second version (2 threads) while calls
    /// run, none refused.
    #[arg(long)]
    swap: bool,
    /// Leave the model loaded and the file in the store.
    #[arg(long)]
    keep: bool,
}

fn state_name(s: i32) -> String {
    ModelState::try_from(s).map_or("?".into(), |s| {
        s.as_str_name()
            .trim_start_matches("MODEL_STATE_")
            .to_owned()
    })
}

pub(crate) async fn upload(target: &str, call: &Call, a: UploadArgs) -> Result<(), String> {
    let family = match a.family.as_str() {
        "text" => ModelFamily::Text,
        "lite" => ModelFamily::Lite,
        "vision" => ModelFamily::Vision,
        other => return Err(format!("--family {other:?}: text, lite or vision")),
    };
    let data = tokio::fs::read(&a.file)
        .await
        .map_err(|e| format!("{}: {e}", a.file.display()))?;
    let name = a
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dest = a.dest.clone().unwrap_or(format!("uploads/{name}"));
    let sha = format!("{:x}", Sha256::digest(&data));
    let total = data.len();
    let mut msgs = vec![PutFileRequest {
        msg: Some(put_file_request::Msg::Header(PutFileHeader {
            path: dest.clone(),
            size_bytes: total as u64,
            sha256: sha.clone(),
            overwrite: true,
        })),
    }];
    msgs.extend(data.chunks(CHUNK).map(|c| PutFileRequest {
        msg: Some(put_file_request::Msg::Chunk(c.to_vec().into())),
    }));
    // Progress as tonic pulls each chunk to send it.
    let (mut sent, mut shown) = (0usize, usize::MAX);
    let stream = tokio_stream::iter(msgs).map(move |m| {
        if let Some(put_file_request::Msg::Chunk(c)) = &m.msg {
            sent += c.len();
            let pct = sent * 100 / total.max(1);
            if pct / 25 != shown {
                shown = pct / 25;
                println!("upload: {} / {} KiB ({pct}%)", sent >> 10, total >> 10);
            }
        }
        m
    });
    let mut models = ModelServiceClient::new(connect(target).await?)
        .max_encoding_message_size(crate::conn::MAX_MESSAGE_BYTES);
    let req = call.request(stream).map_err(|e| show(&e))?;
    let put = call
        .within(models.put_file(req))
        .await
        .map_err(|e| show(&e))?
        .into_inner();
    let file = put.file.unwrap_or_default();
    let verified = file.sha256 == sha;
    println!(
        "uploaded {}: {} bytes, sha256 verified by the server: {verified}",
        file.path, file.size_bytes
    );

    // LoadModel returns when READY; GetModel shows the states meanwhile.
    let load_req = LoadModelRequest {
        model_id: a.model_id.clone(),
        family: family as i32,
        path: dest.clone(),
        ..Default::default()
    };
    let mut loader = models.clone();
    let req = call.request(load_req).map_err(|e| show(&e))?;
    let load = tokio::spawn(async move { loader.load_model(req).await });
    let started = Instant::now();
    let mut seen: Vec<i32> = Vec::new();
    while !load.is_finished() {
        let get = GetModelRequest {
            model_id: a.model_id.clone(),
        };
        if let Ok(m) = models
            .get_model(call.request(get).map_err(|e| show(&e))?)
            .await
        {
            let s = m.into_inner().state;
            if seen.last() != Some(&s) {
                seen.push(s);
            }
        }
        call.remaining().map_err(|e| show(&e))?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let info = load
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| show(&e))?
        .into_inner()
        .model
        .unwrap_or_default();
    if seen.last() != Some(&info.state) {
        seen.push(info.state);
    }
    let states: Vec<String> = seen.iter().map(|&s| state_name(s)).collect();
    println!(
        "load {}: {} in {:.2} s",
        a.model_id,
        states.join(" -> "),
        started.elapsed().as_secs_f64()
    );
    if let (Some(api), ModelFamily::Lite) = (&a.api, family) {
        let mut lite = LiteServiceClient::new(connect(api).await?);
        let req = GetModelInfoRequest {
            model_id: a.model_id.clone(),
        };
        let mi = call
            .within(lite.get_model_info(call.request(req).map_err(|e| show(&e))?))
            .await
            .map_err(|e| show(&e))?
            .into_inner();
        let shapes: Vec<&Vec<i64>> = mi.inputs.iter().map(|t| &t.shape).collect();
        println!(
            "call {}: inputs {shapes:?}, {} outputs",
            a.model_id,
            mi.outputs.len()
        );
    }
    let mut swapped = true;
    if let (true, Some(api), ModelFamily::Lite) = (a.swap, &a.api, family) {
        swapped = swap(&mut models, call, api, &a.model_id, &dest).await?;
    }
    if !a.keep {
        let req = UnloadModelRequest {
            model_id: a.model_id.clone(),
            ..Default::default()
        };
        call.within(models.unload_model(call.request(req).map_err(|e| show(&e))?))
            .await
            .map_err(|e| show(&e))?;
        let req = DeleteFileRequest { path: dest.clone() };
        call.within(models.delete_file(call.request(req).map_err(|e| show(&e))?))
            .await
            .map_err(|e| show(&e))?;
        println!("unloaded {} and deleted {dest}", a.model_id);
    }
    if !verified || !swapped || info.state != ModelState::Ready as i32 {
        return Err("not verified, or not READY".into());
    }
    Ok(())
}

/// LoadModel with `replace`: the new version (other options) loads beside
/// the old one, the id switches to it once READY, the old one drains;
/// calls made meanwhile are answered by one or the other.
async fn swap(
    models: &mut ModelServiceClient<Channel>,
    call: &Call,
    api: &str,
    id: &str,
    dest: &str,
) -> Result<bool, String> {
    let get = GetModelRequest {
        model_id: id.into(),
    };
    let before = call
        .within(models.get_model(call.request(get).map_err(|e| show(&e))?))
        .await
        .map_err(|e| show(&e))?
        .into_inner()
        .version;
    let mut lite = LiteServiceClient::new(connect(api).await?);
    let (stop_tx, mut stop) = tokio::sync::oneshot::channel::<()>();
    let calls = {
        let (id, end) = (id.to_owned(), call.end());
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while stop.try_recv().is_err() && tokio::time::Instant::now() < end {
                let mut req = tonic::Request::new(GetModelInfoRequest {
                    model_id: id.clone(),
                });
                req.set_timeout(Duration::from_secs(5));
                match lite.get_model_info(req).await {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(show(&e)),
                }
                // A client's pace, not a flood.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (ok, failed)
        })
    };
    let req = LoadModelRequest {
        model_id: id.into(),
        family: ModelFamily::Lite as i32,
        path: dest.into(),
        replace: true,
        drain_timeout_ms: 1000,
        options: Some(load_model_request::Options::Lite(LiteOptions {
            threads: 2,
            ..Default::default()
        })),
        ..Default::default()
    };
    let loaded = call
        .within(models.load_model(call.request(req).map_err(|e| show(&e))?))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await; // calls on the new version too
    let _ = stop_tx.send(());
    let (ok, failed) = calls.await.map_err(|e| e.to_string())?;
    let after = loaded
        .map_err(|e| show(&e))?
        .into_inner()
        .model
        .unwrap_or_default()
        .version;
    let first = failed.first().map(|f| format!(": {f}")).unwrap_or_default();
    println!(
        "swap {id}: version {before} -> {after} (threads 1 -> 2), {ok} calls during the swap, {} failed{first}",
        failed.len()
    );
    Ok(after == before + 1 && failed.is_empty() && ok > 0)
}
