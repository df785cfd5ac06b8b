//! Configuration: every shipped file validates, and bad files fail with the key path.

use std::process::Command;

use crate::BIN;

fn conf_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf")
}

#[test]
fn every_file_in_conf_passes_check_config() {
    let mut checked = 0;
    for entry in std::fs::read_dir(conf_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml")
            || path.file_name().unwrap() == "pricing.toml"
        {
            continue;
        }
        let out = Command::new(BIN)
            .arg("check-config")
            .arg(&path)
            .env("OPENAI_API_KEY", "sk-example")
            .env("LOCAL_LLM_KEY", "sk-example")
            .env("AZURE_OPENAI_API_KEY", "example")
            .env("ANTHROPIC_API_KEY", "example")
            .env("GEMINI_API_KEY", "example")
            .env("SLUICE_ADMIN_TOKEN", "example")
            .env("SLUICE_WEBHOOK_URL", "https://hooks.slack.com/services/T000/B000/XXXX")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
        checked += 1;
    }
    assert!(checked >= 2, "default.toml and example.toml at least");
}

#[test]
fn a_bad_file_fails_with_the_key_path_and_a_sentence() {
    let dir = std::env::temp_dir().join(format!("sluice-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        ("[server]\nlisten = \"0.0.0.0:1\"\nthreds = 2\n", "threds"),
        (
            "[providers.x]\nkind = \"mock\"\n[models.a]\ntargets = [{ provider = \"y\", model = \"m\" }]\n",
            "models.a.targets[0].provider",
        ),
        (
            "[providers.x]\nkind = \"openai\"\nbase_url = \"https://api.openai.com/v1\"\napi_key = \"sk-literal\"\n",
            "providers.x.api_key",
        ),
        ("[routing]\ncooldown = \"soon\"\n", "routing.cooldown"),
        (
            "[providers.x]\nkind = \"openai\"\nbase_url = \"https://api.openai.com/v1\"\napi_key = \"env:HOME\"\n\
             [models.a]\ntargets = [{ provider = \"x\", model = \"gpt-4o\" }, { provider = \"x\", model = \"my-finetune\" }]\n",
            "models.a.targets[1].model: `my-finetune` has no price",
        ),
        ("[pricing.models.m]\ninput = \"1.5.0\"\noutput = \"1\"\n", "pricing.models.m.input"),
        (
            "[state]\nredis = \"redis://127.0.0.1:6379\"\n[limits]\nlease_percent = 80\n",
            "limits.lease_percent: 80 is not a share from 0 to 50",
        ),
        ("[state]\nredis = \"redis://127.0.0.1:6379\"\n[limits]\nlease_ttl = \"soon\"\n", "limits.lease_ttl"),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let path = dir.join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = Command::new(BIN).arg("check-config").arg(&path).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "`{needle}` not in: {err}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}
