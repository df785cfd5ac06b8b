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
