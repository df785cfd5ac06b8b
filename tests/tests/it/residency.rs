//! Plugin `residency` through the port: keys and `X-Gateway-Region` pick the region, `phi` traffic
//! reaches only `baa` targets, and a request no allowed target can serve is refused, never re-routed.

use serde_json::Value;
use sluice_tests::gateway::TestGateway;
use sluice_tests::openai::MockOpenAi;

use crate::{BIN, chat_body, client, openai_error};

const ANY: &str = "sk-sluice-any-000000000001";
const EU: &str = "sk-sluice-eu-0000000000001";
const PHI: &str = "sk-sluice-phi-000000000001";

struct Setup {
    gw: TestGateway,
    us: MockOpenAi,
    eu: MockOpenAi,
    baa: MockOpenAi,
}

async fn setup() -> Setup {
    let (us, eu, baa) = (MockOpenAi::start().await, MockOpenAi::start().await, MockOpenAi::start().await);
    let key = |id: &str, secret: &str, extra: &str| {
        format!(
            "[[keys.key]]\nid = \"{id}\"\ndemo_key = \"{secret}\"\norg = \"o\"\nteam = \"t\"\napp = \"a\"\n{extra}\n"
        )
    };
    let provider = |name: &str, mock: &MockOpenAi, extra: &str| {
        format!(
            "[providers.{name}]\nkind = \"openai\"\nbase_url = \"{}\"\napi_key = \"file:{{dir}}/provider.key\"\n\
             health_check = {{ enabled = false }}\n{extra}\n",
            mock.url()
        )
    };
    let config = [
        key("any", ANY, ""),
        key("eu", EU, "regions = [\"eu\"]"),
        key("phi", PHI, "tags = [\"phi\"]"),
        provider("us", &us, "region = \"us\""),
        provider("eu", &eu, "region = \"eu\""),
        provider("eubaa", &baa, "region = \"eu\"\ntags = [\"baa\"]"),
        "[models.m]\ntargets = [{ provider = \"us\", model = \"ok\" }, { provider = \"eu\", model = \"ok\" }]\n".into(),
        "[models.health]\ntargets = [{ provider = \"us\", model = \"ok\" }, { provider = \"eubaa\", model = \"ok\" }]\n"
            .into(),
    ]
    .concat();
    Setup { gw: TestGateway::start(BIN, &config).await, us, eu, baa }
}

async fn call(gw: &TestGateway, key: &str, model: &str, region: Option<&str>) -> reqwest::Response {
    let mut r = client().post(gw.url("/v1/chat/completions")).bearer_auth(key).json(&chat_body(model));
    if let Some(region) = region {
        r = r.header("x-gateway-region", region);
    }
    r.send().await.unwrap()
}

fn target(r: &reqwest::Response) -> String {
    r.headers()["x-sluice-target"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_key_limited_to_eu_skips_the_us_target_even_when_it_comes_first() {
    let s = setup().await;
    let r = call(&s.gw, EU, "m", None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(target(&r), "eu/ok");
    assert_eq!(s.us.hits(), 0);
    let e = openai_error(call(&s.gw, EU, "m", Some("us")).await, 403).await;
    assert_eq!(e["code"], "region_not_allowed");
    assert!(e["message"].as_str().unwrap().contains("allowed: eu"), "{e}");
    assert_eq!(s.us.hits(), 0, "a refused region is never tried");
}

#[tokio::test]
async fn x_gateway_region_narrows_the_choice() {
    let s = setup().await;
    assert_eq!(target(&call(&s.gw, ANY, "m", Some("eu")).await), "eu/ok");
    assert_eq!(target(&call(&s.gw, ANY, "m", Some("us")).await), "us/ok");
    let e = openai_error(call(&s.gw, ANY, "m", Some("ap")).await, 403).await;
    assert_eq!(e["code"], "residency_violation");
    assert_eq!((s.us.hits(), s.eu.hits()), (1, 1));
}

#[tokio::test]
async fn phi_traffic_reaches_only_baa_targets_and_is_refused_where_there_is_none() {
    let s = setup().await;
    let r = call(&s.gw, PHI, "health", None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(target(&r), "eubaa/ok");
    let e: Value = openai_error(call(&s.gw, PHI, "m", None).await, 403).await;
    assert_eq!(e["code"], "residency_violation");
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("target tags baa") && msg.contains("never sent elsewhere"), "{msg}");
    assert_eq!((s.us.hits(), s.eu.hits(), s.baa.hits()), (0, 0, 1), "nothing went to a non-BAA target");
}

/// Two regions over one file: `eu` has provider `p0`, `us` has `p1`; `[server] region` (or
/// `--region`) says which one an instance serves.
fn regional(eu: &MockOpenAi, us: &MockOpenAi, prefix: &str, region: &str) -> String {
    let server = if region.is_empty() { String::new() } else { format!("[server]\nregion = \"{region}\"\n") };
    crate::config(
        &[eu.url(), us.url()],
        &format!(
            "{server}[models.chat]\ntargets = [{{ provider = \"p1\", model = \"ok\" }}, {{ provider = \"p0\", model = \"ok\" }}]\n\
             [models.us-only]\ntargets = [{{ provider = \"p1\", model = \"ok\" }}]\n\
             [limits]\nteam = {{ rpm = 100 }}\n\
             [regions.eu]\nproviders = [\"p0\"]\nredis = \"redis://127.0.0.1:6379\"\nkey_prefix = \"{prefix}eu:\"\n\
             [regions.us]\nproviders = [\"p1\"]\nredis = \"redis://127.0.0.1:6379\"\nkey_prefix = \"{prefix}us:\"\n"
        ),
    )
}

#[tokio::test]
async fn an_instance_of_a_region_uses_only_its_providers_and_its_state() {
    let (eu, us) = (MockOpenAi::start().await, MockOpenAi::start().await);
    let prefix = crate::redis_prefix();
    let gw = TestGateway::start(BIN, &regional(&eu, &us, &prefix, "eu")).await;
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(crate::KEY)
        .json(&chat_body("chat"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["x-sluice-target"],
        "p0/ok",
        "the us target, first in the chain, is not this region's"
    );
    assert_eq!((eu.hits(), us.hits()), (1, 0));
    let e = openai_error(
        client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(crate::KEY)
            .json(&chat_body("us-only"))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    assert!(e["message"].as_str().unwrap().contains("is not served in region `eu`"), "{e}");
    assert_eq!(us.hits(), 0);
    let models: Value = client()
        .get(gw.url("/v1/models"))
        .bearer_auth(crate::KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(ids, ["chat"]);
    // The region's state: its limit counters live under its own prefix.
    let keys = std::process::Command::new("redis-cli")
        .args(["--scan", "--pattern", &format!("{prefix}*")])
        .output()
        .unwrap();
    let keys = String::from_utf8_lossy(&keys.stdout).into_owned();
    assert!(!keys.is_empty() && keys.lines().all(|k| k.starts_with(&format!("{prefix}eu:"))), "{keys}");

    // One shared file is checked for every region when it names none.
    let path = gw.dir().join("regions.toml");
    let text = regional(&eu, &us, &prefix, "").replace("{dir}", &gw.dir().display().to_string());
    std::fs::write(&path, text + sluice_tests::gateway::TEST_PRICING).unwrap();
    let out = std::process::Command::new(BIN).arg("check-config").arg(&path).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("1 models in eu, 2 models in us"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
