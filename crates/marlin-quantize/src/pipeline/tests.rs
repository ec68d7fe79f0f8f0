use super::output::{Manifest, OutputDir, MANIFEST_FILE};
use super::*;
use marlin_io::checkpoint::SafetensorsWriter;

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("marlin-quantize-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn output_dir_resumes_only_the_same_job() {
    let dir = temp_dir("outdir");
    let mut out = OutputDir::prepare(&dir, "job-a").unwrap();
    let mut w = SafetensorsWriter::new();
    w.add_f32("x", &[1], &[1.0]).unwrap();
    out.write_layer(0, &w).unwrap();
    out.write_layer(1, &w).unwrap();
    // A layer whose shard was lost is redone.
    std::fs::remove_file(dir.join("model-layer-00001.safetensors")).unwrap();
    let again = OutputDir::prepare(&dir, "job-a").unwrap();
    assert_eq!(
        again
            .manifest
            .layers_done
            .iter()
            .copied()
            .collect::<Vec<_>>(),
        vec![0]
    );
    assert!(matches!(
        OutputDir::prepare(&dir, "job-b"),
        Err(QuantizeError::BadInput(_))
    ));
    // A finished checkpoint is never overwritten.
    std::fs::write(dir.join("config.json"), "{}").unwrap();
    assert!(OutputDir::prepare(&dir, "job-a").is_err());
    std::fs::remove_dir_all(&dir).unwrap();
    // A non-empty directory that is not ours.
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("notes.txt"), "x").unwrap();
    assert!(OutputDir::prepare(&dir, "job-a").is_err());
    assert!(!dir.join(MANIFEST_FILE).exists());
    std::fs::remove_dir_all(&dir).unwrap();
    let _ = Manifest {
        fingerprint: String::new(),
        layers_done: Default::default(),
    };
}

#[test]
fn bad_options_fail_before_work() {
    let missing = temp_dir("missing-input");
    let out = temp_dir("missing-out");
    let job = QuantizeJob::new(missing, out.clone(), Format::Int4, Method::Rtn);
    let mut lines = Vec::new();
    let err = quantize_model(&job, &mut |l| lines.push(l.to_string())).unwrap_err();
    assert!(err.to_string().contains("no such file"), "{err}");
    assert!(!out.exists());
    assert_eq!(Method::parse("mr-gptq").unwrap(), Method::MrGptq);
    assert!(Method::parse("mr_gptq").is_err());
    assert!(Method::parse("gptq").is_ok());
    let mut job = QuantizeJob::new(PathBuf::from("x"), out, Format::Int4, Method::Rtn);
    job.group_size = 0;
    assert!(matches!(
        quantize_model(&job, &mut |_| {}),
        Err(QuantizeError::InvalidOption(_))
    ));
}
