//! `--init-encoder`: a plain safetensors state dict with torchvision names
//! loads into a ResNet encoder's parameters and batch-norm buffers (the other
//! modalities keep their seeded initialisation), is not read again when a
//! resumed run restores its checkpoint, and every bad file or setting is a
//! clear error naming it.

mod trainer_common;

use mla_cpu::Cpu;
use mla_models::data::Dataset;
use mla_models::trainer::Silent;
use mla_models::trainer::{EncoderInit, HgmMode, MethodKind, TrainConfig, Trainer};
use safetensors::tensor::{Dtype, TensorView};
use std::path::Path;
use std::sync::Arc;
use trainer_common::{synthetic, train_in, Synthetic, TempDir};

const PREFIX: &str = "encoder.image.";

fn cfg(init: &str) -> TrainConfig {
    TrainConfig {
        method: MethodKind::Joint,
        encoder: "image=resnet18-small,audio=mlp".into(),
        width_mult: 0.125,
        feature_size: 64,
        epochs: 1,
        batch_size: 32,
        hgm: HgmMode::None,
        init_encoder: init.parse().unwrap(),
        ..TrainConfig::default()
    }
}

fn value(k: usize, i: usize) -> f32 {
    0.01 * ((i as f32) * 0.37 + k as f32).sin()
}

/// Writes a state dict: the image encoder's names without the prefix, values
/// from `value`, plus an `fc` classifier; `edit` may change the list first.
fn write_dict(
    path: &Path,
    shapes: &[(String, Vec<usize>)],
    edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Dtype)>),
) {
    let mut entries: Vec<(String, Vec<usize>, Dtype)> = shapes
        .iter()
        .map(|(n, s)| (n[PREFIX.len()..].to_string(), s.clone(), Dtype::F32))
        .collect();
    entries.push(("fc.weight".into(), vec![10, 64], Dtype::F32));
    entries.push(("fc.bias".into(), vec![10], Dtype::F32));
    edit(&mut entries);
    let bytes: Vec<Vec<u8>> = entries
        .iter()
        .enumerate()
        .map(|(k, (_, s, d))| {
            let n: usize = s.iter().product();
            match d {
                Dtype::F64 => (0..n)
                    .flat_map(|i| (value(k, i) as f64).to_le_bytes())
                    .collect(),
                _ => (0..n).flat_map(|i| value(k, i).to_le_bytes()).collect(),
            }
        })
        .collect();
    let views: Vec<(String, TensorView)> = entries
        .iter()
        .zip(&bytes)
        .map(|((n, s, d), b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::tensor::serialize_to_file(views, None, path).unwrap();
}

fn setup() -> (
    TempDir,
    Arc<Dataset>,
    Vec<(String, Vec<usize>)>,
    Vec<(String, Vec<f32>)>,
) {
    let data = synthetic("init-encoder", &Synthetic::default());
    let ds = Arc::new(Dataset::open(data.path()).unwrap());
    let plain = Trainer::new(Cpu, ds.clone(), cfg("")).unwrap();
    let shapes = plain.model().encoder("image").unwrap().param_shapes();
    let audio: Vec<(String, Vec<f32>)> = plain
        .model()
        .params()
        .iter()
        .filter(|(n, _)| n.starts_with("encoder.audio."))
        .map(|(n, t)| (n.to_string(), t.to_vec().unwrap()))
        .collect();
    (data, ds, shapes, audio)
}

#[test]
fn weights_and_buffers_load_and_the_rest_keeps_its_seeded_init() {
    let (data, ds, shapes, audio) = setup();
    let file = data.join("resnet.safetensors");
    write_dict(&file, &shapes, |_| {});
    let spec = format!("image={}", file.display());
    let t = Trainer::new(Cpu, ds.clone(), cfg(&spec)).unwrap();
    // Names in file order, as the writer laid them out (buffers included).
    for (k, (name, shape)) in shapes.iter().enumerate() {
        let got = t.model().params().get(name).unwrap().to_vec().unwrap();
        let n: usize = shape.iter().product();
        let want: Vec<f32> = (0..n).map(|i| value(k, i)).collect();
        assert_eq!(got, want, "{name}");
    }
    assert!(shapes.iter().any(|(n, _)| n.ends_with("running_var")));
    for (name, v) in &audio {
        assert_eq!(
            &t.model().params().get(name).unwrap().to_vec().unwrap(),
            v,
            "{name}"
        );
    }
    // A run trains from them; resuming from its checkpoint does not read the
    // file again (it may be gone by then).
    let runs = TempDir::new("init-encoder-runs");
    let dir = runs.join("r");
    train_in(
        &ds,
        TrainConfig {
            epochs: 1,
            ..cfg(&spec)
        },
        &dir,
    );
    std::fs::remove_file(&file).unwrap();
    let mut r = Trainer::resume(Cpu, ds.clone(), &dir, Some(2)).unwrap();
    r.run(&mut Silent).unwrap();
}

#[test]
fn bad_files_and_settings_are_clear_errors() {
    let (data, ds, shapes, _) = setup();
    let err = |c: TrainConfig| match Trainer::new(Cpu, ds.clone(), c) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("accepted"),
    };
    let file = data.join("bad.safetensors");
    let spec = format!("image={}", file.display());
    // A missing tensor and a wrong shape: both listed, with the file's name.
    write_dict(&file, &shapes, |e| {
        e.retain(|(n, _, _)| n != "bn1.weight");
        e[0].1 = vec![3, 3];
    });
    let msg = err(cfg(&spec));
    assert!(
        msg.contains("bad.safetensors") && msg.contains("missing 'bn1.weight'"),
        "{msg}"
    );
    assert!(msg.contains("has shape [3, 3]"), "{msg}");
    // f64 values.
    write_dict(&file, &shapes, |e| e[1].2 = Dtype::F64);
    assert!(err(cfg(&spec)).contains("F64"), "{}", err(cfg(&spec)));
    // Not a safetensors file; no file at all.
    std::fs::write(&file, b"not a safetensors file").unwrap();
    assert!(err(cfg(&spec)).contains("bad.safetensors"));
    std::fs::remove_file(&file).unwrap();
    assert!(err(cfg(&spec)).contains("bad.safetensors"));
    // A modality the model lacks, an encoder that is not a ResNet.
    write_dict(&file, &shapes, |_| {});
    let msg = err(cfg(&format!("touch={}", file.display())));
    assert!(msg.contains("image, audio"), "{msg}");
    let msg = err(TrainConfig {
        encoder: "cnn".into(),
        feature_size: 64,
        ..cfg(&spec)
    });
    assert!(msg.contains("cnn") && msg.contains("resnet18"), "{msg}");
    // The flag's own syntax.
    for bad in ["image", "image=", "image=a,image=b"] {
        assert!(bad.parse::<EncoderInit>().is_err(), "{bad}");
    }
}
