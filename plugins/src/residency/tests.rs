use sluice_core::ctx::Endpoint;

use super::*;
use crate::test_support::block_on;

fn ctx(regions: Option<Vec<&str>>, tags: &[&str], hint: Option<&str>) -> RequestCtx {
    let mut c = crate::test_support::ctx("t");
    if let Some(who) = c.identity.as_mut().map(std::sync::Arc::make_mut) {
        who.allowed_regions = regions.map(|r| r.into_iter().map(str::to_owned).collect());
        who.tags = tags.iter().map(|t| (*t).to_owned()).collect();
    }
    c.region_hint = hint.map(str::to_owned);
    c
}

fn run(plugin: &ResidencyPlugin, c: &mut RequestCtx) -> Result<Flow, GatewayError> {
    let mut request = Request::parse(
        Endpoint::ChatCompletions,
        &mut br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#.to_vec(),
    )
    .unwrap();
    block_on(plugin.on_request(c, &mut request))
}

#[test]
fn phi_requires_baa_targets_and_regions_narrow_but_never_widen() {
    let plugin = ResidencyPlugin::new(ResidencyConfig::default());
    let mut c = ctx(Some(vec!["eu", "eu-west"]), &["phi"], Some("eu-west"));
    run(&plugin, &mut c).unwrap();
    let r = c.residency.clone().unwrap();
    assert_eq!(r.regions, Some(vec!["eu-west".to_owned()]));
    assert_eq!(r.required_tags, ["baa"]);
    assert!(r.admits(Some("eu-west"), &["baa".into()]));
    assert!(!r.admits(Some("eu-west"), &[]), "no BAA");
    assert!(!r.admits(None, &["baa".into()]), "a target without a region is not in eu-west");

    let mut c = ctx(Some(vec!["eu"]), &[], Some("us"));
    let e = run(&plugin, &mut c).unwrap_err();
    assert_eq!((e.status(), e.code), (403, Some("region_not_allowed")));

    let mut c = ctx(None, &[], None);
    run(&plugin, &mut c).unwrap();
    assert_eq!(c.residency, None, "no constraint: anywhere");
}

#[test]
fn team_regions_and_tags_apply_to_every_key_of_the_team() {
    let mut config = ResidencyConfig::default();
    config
        .teams
        .insert("t".into(), TeamResidency { regions: Some(vec!["eu".into()]), tags: vec!["phi".into()] });
    let plugin = ResidencyPlugin::new(config);
    let mut c = ctx(Some(vec!["eu", "us"]), &[], None);
    run(&plugin, &mut c).unwrap();
    assert_eq!(
        c.residency,
        Some(Residency { regions: Some(vec!["eu".into()]), required_tags: vec!["baa".into()] })
    );
}
