//! The store against both engines: every test function runs on SQLite (a file in a temporary
//! directory) and on a real PostgreSQL started for the test.

// Helpers outside #[test] functions unwrap too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::PgServer;
use csg_consoled::store::{
    self, AuditEvent, AuditFilter, CallInsert, CallRecord, CallState, HostSample, InstanceFilter,
    InstanceOrder, InstanceRow, JsonText, NewToken, Page, PageLimit, Presence, PresenceEvent,
    Region, Scope, SortKey, StaleCalls, StorageSummary, Store, StoreError, StoreOptions, TokenHash,
    TokenName, TokenSecret,
};
use csg_protocol::identity::{GroupId, InstanceId, RequestId};
use serde_json::json;

/// The list's default order (region, then instance id).
const ORDER: InstanceOrder = InstanceOrder {
    key: SortKey::Id,
    descending: false,
};

enum Backing {
    Sqlite(tempfile::TempDir),
    Postgres(PgServer),
}

struct Fixture {
    url: String,
    store: Arc<dyn Store>,
    backing: Backing,
}

fn options() -> StoreOptions {
    StoreOptions {
        acquire_timeout: Duration::from_secs(2),
        ..StoreOptions::default()
    }
}

async fn sqlite() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("console.db").display());
    let store = store::open_with(&url, &options()).await.unwrap();
    Fixture {
        url,
        store,
        backing: Backing::Sqlite(dir),
    }
}

async fn postgres() -> Fixture {
    let server = tokio::task::spawn_blocking(PgServer::start)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("PostgreSQL did not start: {e}"));
    let url = server.url();
    let store = store::open_with(&url, &options()).await.unwrap();
    Fixture {
        url,
        store,
        backing: Backing::Postgres(server),
    }
}

/// Generates `<name>::sqlite` and `<name>::postgres` from one `async fn name(&mut Fixture)`.
macro_rules! both_engines {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let mut fx = super::sqlite().await;
                super::$name(&mut fx).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let mut fx = super::postgres().await;
                super::$name(&mut fx).await;
            }
        }
    )*};
}

both_engines!(
    migrations_are_idempotent,
    upsert_then_read_back,
    upserts_that_change_indexed_columns_are_written_in_full,
    host_samples_keep_the_last_sixty_once_each_in_time_order,
    keyset_paging_returns_each_row_once_under_every_filter,
    keyset_paging_in_every_order_returns_each_row_once,
    cursor_from_another_filter_is_refused,
    presence_events_newest_first,
    tokens_store_only_a_hash,
    bulk_upsert_of_10k_rows,
    calls_are_stored_once_and_an_answer_is_final,
    audit_is_paged_newest_first_and_filtered,
    stale_pending_calls_are_claimed_once_and_leased,
    the_sweeper_resends_young_calls_and_ends_the_rest_unknown,
);

async fn host_samples_keep_the_last_sixty_once_each_in_time_order(fx: &mut Fixture) {
    const NOW: u64 = 1_764_979_300_000;
    let s = &fx.store;
    let sample = |n: u64| HostSample::of(1_764_979_200_000 + n * 1000, n as f32, n, 100);
    let (r, a) = (region("cn-hangzhou"), InstanceId::new("gw-a").unwrap());
    assert_eq!(s.host_samples(&r, &a, NOW).await.unwrap(), vec![]);
    for n in 0..70u64 {
        let mut row = instance("cn-hangzhou", "gw-a", 10 + n as i64);
        row.sample = Some(sample(n));
        // Every third write moves an indexed column (on SQLite, the full statement's path);
        // the row beside it in the batch changes its presence every time, so the chunk is
        // written again in full after the first statement wrote gw-a: its sample is appended
        // once all the same.
        if n % 3 == 0 {
            row.since_ms = n as i64;
        }
        let mut b = instance("cn-hangzhou", "gw-b", 10 + n as i64);
        b.presence = if n % 2 == 0 {
            Presence::Online
        } else {
            Presence::Stale
        };
        s.upsert_instances(&[row.clone(), b]).await.unwrap();
        // The same heartbeat written again (a presence change, another replica): not twice.
        if n % 5 == 0 {
            row.updated_ms += 1;
            row.presence = Presence::Stale;
            s.upsert_instances(&[row]).await.unwrap();
        }
    }
    // A row with no heartbeat leaves the samples; one older than the stored row is ignored,
    // its sample too.
    s.upsert_instances(&[instance("cn-hangzhou", "gw-a", 1_000)])
        .await
        .unwrap();
    let mut old = instance("cn-hangzhou", "gw-a", 5);
    old.sample = Some(sample(500));
    s.upsert_instances(&[old]).await.unwrap();
    let got = s.host_samples(&r, &a, NOW).await.unwrap();
    let want: Vec<HostSample> = (10..70).map(sample).collect();
    assert_eq!(got, want);
    assert_eq!(
        s.host_samples(&r, &InstanceId::new("gw-b").unwrap(), NOW)
            .await
            .unwrap(),
        vec![]
    );
    // Another region's gateway of the same id is another gateway.
    assert_eq!(
        s.host_samples(&region("cn-shanghai"), &a, NOW)
            .await
            .unwrap(),
        vec![]
    );
}

/// The URL of a second, empty database beside the fixture's.
async fn fresh_database(fx: &Fixture) -> String {
    match &fx.backing {
        Backing::Sqlite(dir) => format!("sqlite://{}", dir.path().join("fresh.db").display()),
        Backing::Postgres(server) => {
            let mut conn: sqlx::PgConnection = sqlx::Connection::connect(&fx.url).await.unwrap();
            sqlx::query("CREATE DATABASE fresh")
                .execute(&mut conn)
                .await
                .unwrap();
            server.url().replace("/postgres", "/fresh")
        }
    }
}

fn region(s: &str) -> Region {
    Region::new(s).unwrap()
}

fn instance(r: &str, id: &str, updated_ms: i64) -> InstanceRow {
    InstanceRow {
        region: region(r),
        instance_id: InstanceId::new(id).unwrap(),
        group_id: GroupId::new("GID_csg").unwrap(),
        presence: Presence::Online,
        since_ms: 1_000,
        reason: None,
        last_seen_ms: Some(updated_ms),
        agent_version: Some("0.1.0".to_owned()),
        heartbeat: Some(JsonText::of(&json!({"seq": updated_ms, "load": [0.5, 0.25]})).unwrap()),
        storage: Some(StorageSummary { count: 3, drift: 0 }),
        updated_ms,
        sample: None,
    }
}

fn limit(n: u32) -> PageLimit {
    PageLimit::new(n).unwrap()
}

async fn migrations_are_idempotent(fx: &mut Fixture) {
    fx.store
        .upsert_instances(&[instance("cn-hangzhou", "gw-1", 10)])
        .await
        .unwrap();
    // A fresh database opened by two at once, as replicas starting together (or `token create`
    // beside a service starting for the first time): both end up migrated, neither fails.
    let fresh = fresh_database(fx).await;
    let opts = options();
    let (a, b) = tokio::join!(
        store::open_with(&fresh, &opts),
        store::open_with(&fresh, &opts)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    a.upsert_instances(&[instance("cn-hangzhou", "gw-1", 10)])
        .await
        .unwrap();
    assert!(b
        .get_instance(&region("cn-hangzhou"), &InstanceId::new("gw-1").unwrap())
        .await
        .unwrap()
        .is_some());
    a.close().await;
    b.close().await;
    // Twice more on the same database: each finds nothing to do.
    for _ in 0..2 {
        let again = store::open_with(&fx.url, &options()).await.unwrap();
        again.ping().await.unwrap();
        let got = again
            .get_instance(&region("cn-hangzhou"), &InstanceId::new("gw-1").unwrap())
            .await
            .unwrap();
        assert_eq!(got, Some(instance("cn-hangzhou", "gw-1", 10)));
        again.close().await;
    }
}

async fn upsert_then_read_back(fx: &mut Fixture) {
    let s = &fx.store;
    let mut offline = instance("cn-shanghai", "gw-b", 20);
    offline.presence = Presence::Offline;
    offline.reason = Some("will".to_owned());
    offline.heartbeat = None;
    // One batch, with gw-a twice: the newer row wins.
    s.upsert_instances(&[
        instance("cn-hangzhou", "gw-a", 30),
        offline.clone(),
        instance("cn-hangzhou", "gw-a", 10),
    ])
    .await
    .unwrap();
    let a = InstanceId::new("gw-a").unwrap();
    let b = InstanceId::new("gw-b").unwrap();
    assert_eq!(
        s.get_instance(&region("cn-hangzhou"), &a).await.unwrap(),
        Some(instance("cn-hangzhou", "gw-a", 30))
    );
    assert_eq!(
        s.get_instance(&region("cn-shanghai"), &b).await.unwrap(),
        Some(offline.clone())
    );
    // The same id in another region is another instance.
    assert_eq!(
        s.get_instance(&region("cn-shanghai"), &a).await.unwrap(),
        None
    );

    // A later batch updates; an older row (another replica, late) changes nothing.
    let mut newer = instance("cn-hangzhou", "gw-a", 40);
    newer.agent_version = Some("0.2.0".to_owned());
    s.upsert_instances(&[newer.clone()]).await.unwrap();
    s.upsert_instances(&[instance("cn-hangzhou", "gw-a", 35)])
        .await
        .unwrap();
    assert_eq!(
        s.get_instance(&region("cn-hangzhou"), &a).await.unwrap(),
        Some(newer)
    );
    s.upsert_instances(&[]).await.unwrap();
}

/// A batch mixing rows whose indexed columns (group, presence, drift) keep their values with
/// rows that change them, and an older row: every row ends as the full write would leave it,
/// and the indexed filters find the changed ones (SQLite writes the unchanged ones without
/// touching its indexes).
async fn upserts_that_change_indexed_columns_are_written_in_full(fx: &mut Fixture) {
    let s = &fx.store;
    let first: Vec<InstanceRow> = (0..600)
        .map(|n| instance("cn-hangzhou", &format!("gw-{n:04}"), 10))
        .collect();
    s.upsert_instances(&first).await.unwrap();
    let mut second: Vec<InstanceRow> = (0..600)
        .map(|n| instance("cn-hangzhou", &format!("gw-{n:04}"), 20))
        .collect();
    second[3].presence = Presence::Stale;
    second[3].reason = Some("missed".to_owned());
    second[250].group_id = GroupId::new("GID_other").unwrap();
    second[251].storage = Some(StorageSummary { count: 3, drift: 2 });
    // An upgrade, a version gone (none reported) and a presence start moved without a change
    // of state: columns the orders' indexes hold.
    second[260].agent_version = Some("0.9.0".to_owned());
    second[261].agent_version = None;
    second[262].since_ms = 99;
    // Rows 500 on (the second statement) change nothing indexed. Older than the stored row:
    // ignored.
    second[7] = instance("cn-hangzhou", "gw-0007", 5);
    second[7].presence = Presence::Offline;
    s.upsert_instances(&second).await.unwrap();
    for (n, want) in second.iter().enumerate() {
        let want = if n == 7 { &first[7] } else { want };
        assert_eq!(
            s.get_instance(&want.region, &want.instance_id)
                .await
                .unwrap()
                .as_ref(),
            Some(want),
            "row {n}"
        );
    }
    let ids_of = |page: Page<InstanceRow>| -> Vec<String> {
        page.items
            .into_iter()
            .map(|r| r.instance_id.as_str().to_owned())
            .collect()
    };
    let by = |f: InstanceFilter| {
        let s = s.clone();
        async move {
            ids_of(
                s.list_instances(&f, ORDER, limit(1000), None)
                    .await
                    .unwrap(),
            )
        }
    };
    let stale = by(InstanceFilter {
        presence: Some(Presence::Stale),
        ..InstanceFilter::default()
    })
    .await;
    assert_eq!(stale, vec!["gw-0003"]);
    let other = by(InstanceFilter {
        groups: vec![GroupId::new("GID_other").unwrap()],
        ..InstanceFilter::default()
    })
    .await;
    assert_eq!(other, vec!["gw-0250"]);
    let drift = by(InstanceFilter {
        drift: Some(true),
        ..InstanceFilter::default()
    })
    .await;
    assert_eq!(drift, vec!["gw-0251"]);
    let online = by(InstanceFilter {
        presence: Some(Presence::Online),
        ..InstanceFilter::default()
    })
    .await;
    assert_eq!(online.len(), 599);
    // The orders' indexes hold the new values: the first rows by version and by since.
    let first_of = |order: &str| {
        let s = s.clone();
        let order = InstanceOrder::parse(order).unwrap();
        async move {
            ids_of(
                s.list_instances(&InstanceFilter::default(), order, limit(2), None)
                    .await
                    .unwrap(),
            )
        }
    };
    assert_eq!(first_of("version").await, vec!["gw-0261", "gw-0000"]);
    assert_eq!(first_of("-version").await, vec!["gw-0260", "gw-0599"]);
    assert_eq!(first_of("since").await, vec!["gw-0262", "gw-0000"]);
    assert_eq!(first_of("-presence").await, vec!["gw-0003", "gw-0599"]);
}

fn fleet() -> Vec<InstanceRow> {
    let groups = ["GID_a", "GID_b", "GID_c"];
    let versions = ["0.1.0", "0.2.0"];
    let presences = [Presence::Online, Presence::Stale, Presence::Offline];
    (0..1000)
        .map(|i| {
            let r = if i % 2 == 0 {
                "cn-hangzhou"
            } else {
                "cn-shanghai"
            };
            let mut row = instance(r, &format!("gw-{:04}", (i * 7919) % 1000), 100 + i);
            row.group_id = GroupId::new(groups[(i % 3) as usize]).unwrap();
            row.agent_version = Some(versions[(i % 5 % 2) as usize].to_owned());
            row.presence = presences[(i % 7 % 3) as usize];
            row.storage = Some(StorageSummary {
                count: 4,
                drift: u64::from(i % 11 == 0) * (i % 3 + 1) as u64,
            });
            row
        })
        .collect()
}

fn filters() -> Vec<InstanceFilter> {
    let ids: Vec<InstanceId> = (0..1000)
        .step_by(6)
        .map(|i| InstanceId::new(format!("gw-{i:04}")).unwrap())
        .collect();
    vec![
        InstanceFilter::default(),
        InstanceFilter {
            region: Some(region("cn-shanghai")),
            ..Default::default()
        },
        InstanceFilter {
            presence: Some(Presence::Stale),
            ..Default::default()
        },
        InstanceFilter {
            drift: Some(true),
            ..Default::default()
        },
        InstanceFilter {
            drift: Some(false),
            presence: Some(Presence::Online),
            ..Default::default()
        },
        InstanceFilter {
            groups: vec![GroupId::new("GID_b").unwrap()],
            ..Default::default()
        },
        InstanceFilter {
            groups: vec![
                GroupId::new("GID_c").unwrap(),
                GroupId::new("GID_a").unwrap(),
            ],
            ..Default::default()
        },
        InstanceFilter {
            version: Some("0.2.0".to_owned()),
            ..Default::default()
        },
        InstanceFilter {
            ids: ids.clone(),
            ..Default::default()
        },
        InstanceFilter {
            q: Some("-01".to_owned()),
            ..Default::default()
        },
        InstanceFilter {
            q: Some("7".to_owned()),
            ..Default::default()
        },
        InstanceFilter {
            region: Some(region("cn-hangzhou")),
            presence: Some(Presence::Online),
            groups: vec![GroupId::new("GID_a").unwrap()],
            version: Some("0.1.0".to_owned()),
            ids,
            q: Some("2".to_owned()),
            drift: None,
        },
    ]
}

fn matches(f: &InstanceFilter, r: &InstanceRow) -> bool {
    f.region.as_ref().is_none_or(|x| *x == r.region)
        && f.presence.is_none_or(|p| p == r.presence)
        && (f.groups.is_empty() || f.groups.contains(&r.group_id))
        && f.version
            .as_ref()
            .is_none_or(|v| Some(v) == r.agent_version.as_ref())
        && f.drift.is_none_or(|d| d == (r.drift() > 0))
        && (f.ids.is_empty() || f.ids.contains(&r.instance_id))
        && f.q
            .as_ref()
            .is_none_or(|q| r.instance_id.as_str().contains(q.as_str()))
}

async fn keyset_paging_returns_each_row_once_under_every_filter(fx: &mut Fixture) {
    let rows = fleet();
    fx.store.upsert_instances(&rows).await.unwrap();
    for filter in filters() {
        let mut expected: Vec<(String, String)> = rows
            .iter()
            .filter(|r| matches(&filter, r))
            .map(|r| (r.region.to_string(), r.instance_id.to_string()))
            .collect();
        expected.sort();
        assert!(!expected.is_empty(), "filter selects nothing: {filter:?}");
        let mut got = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let page = fx
                .store
                .list_instances(&filter, ORDER, limit(37), cursor.as_deref())
                .await
                .unwrap();
            assert!(page.items.len() <= 37);
            got.extend(
                page.items
                    .iter()
                    .map(|r| (r.region.to_string(), r.instance_id.to_string())),
            );
            pages += 1;
            assert!(pages <= 1000 / 37 + 2, "paging does not end: {filter:?}");
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(got, expected, "filter {filter:?}");
    }
}

/// The key `order` sorts a row by: its region, the order's value in the store's terms (presence
/// online, stale, offline; no version reads as ""), its id.
fn order_key(order: InstanceOrder, r: &InstanceRow) -> (String, i64, String, String) {
    let (n, t) = match order.key {
        SortKey::Id => (0, String::new()),
        SortKey::Group => (0, r.group_id.to_string()),
        SortKey::Presence => (
            match r.presence {
                Presence::Online => 0,
                Presence::Stale => 1,
                Presence::Offline => 2,
            },
            String::new(),
        ),
        SortKey::Since => (r.since_ms, String::new()),
        SortKey::Version => (0, r.agent_version.clone().unwrap_or_default()),
        SortKey::Drift => (r.drift(), String::new()),
    };
    (r.region.to_string(), n, t, r.instance_id.to_string())
}

async fn keyset_paging_in_every_order_returns_each_row_once(fx: &mut Fixture) {
    let mut rows = fleet();
    // Orders with many ties (three presences, two versions) and a missing version.
    for (i, r) in rows.iter_mut().enumerate() {
        r.since_ms = 1_000 + (i as i64 % 13) * 7;
        if i % 17 == 0 {
            r.agent_version = None;
        }
    }
    fx.store.upsert_instances(&rows).await.unwrap();
    let filters = [
        InstanceFilter::default(),
        InstanceFilter {
            presence: Some(Presence::Stale),
            ..Default::default()
        },
        InstanceFilter {
            groups: vec![GroupId::new("GID_b").unwrap()],
            drift: Some(false),
            ..Default::default()
        },
        // One region: the region leaves the comparison.
        InstanceFilter {
            region: Some(region("cn-shanghai")),
            ..Default::default()
        },
        InstanceFilter {
            region: Some(region("cn-hangzhou")),
            presence: Some(Presence::Online),
            ..Default::default()
        },
    ];
    for key in SortKey::ALL {
        for descending in [false, true] {
            let order = InstanceOrder { key, descending };
            for filter in &filters {
                let mut want: Vec<&InstanceRow> =
                    rows.iter().filter(|r| matches(filter, r)).collect();
                want.sort_by_key(|r| order_key(order, r));
                if descending {
                    want.reverse();
                }
                let want: Vec<String> = want.iter().map(|r| r.instance_id.to_string()).collect();
                let mut got: Vec<String> = Vec::new();
                let mut cursor: Option<String> = None;
                loop {
                    let page = fx
                        .store
                        .list_instances(filter, order, limit(37), cursor.as_deref())
                        .await
                        .unwrap();
                    got.extend(page.items.iter().map(|r| r.instance_id.to_string()));
                    assert!(got.len() <= rows.len(), "paging does not end: {order}");
                    match page.next_cursor {
                        Some(c) => cursor = Some(c),
                        None => break,
                    }
                }
                assert_eq!(got, want, "order {order}, filter {filter:?}");
            }
        }
    }
    // A cursor made under one order is refused under another, and under its reverse.
    let first = fx
        .store
        .list_instances(
            &InstanceFilter::default(),
            InstanceOrder::parse("since").unwrap(),
            limit(10),
            None,
        )
        .await
        .unwrap();
    let cursor = first.next_cursor.unwrap();
    for other in ["id", "-since", "version"] {
        let err = fx
            .store
            .list_instances(
                &InstanceFilter::default(),
                InstanceOrder::parse(other).unwrap(),
                limit(10),
                Some(&cursor),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{other}: {err:?}");
    }
    for bad in ["", "-", "--since", "last_seen", "Since", "since "] {
        assert!(InstanceOrder::parse(bad).is_err(), "{bad:?} parsed");
    }
}

async fn cursor_from_another_filter_is_refused(fx: &mut Fixture) {
    fx.store.upsert_instances(&fleet()).await.unwrap();
    let online = InstanceFilter {
        presence: Some(Presence::Online),
        ..Default::default()
    };
    let page = fx
        .store
        .list_instances(&online, ORDER, limit(10), None)
        .await
        .unwrap();
    let cursor = page.next_cursor.unwrap();
    let offline = InstanceFilter {
        presence: Some(Presence::Offline),
        ..Default::default()
    };
    let err = fx
        .store
        .list_instances(&offline, ORDER, limit(10), Some(&cursor))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    // The same filter takes it, whatever the page size.
    fx.store
        .list_instances(&online, ORDER, limit(500), Some(&cursor))
        .await
        .unwrap();
    for garbage in ["", "x", "eyJmIjoiYSIsImsiOjF9", &"A".repeat(5000)] {
        let err = fx
            .store
            .list_instances(&online, ORDER, limit(10), Some(garbage))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{garbage}: {err:?}");
    }
    assert!(PageLimit::new(0).is_err());
    assert!(PageLimit::new(1001).is_err());
}

async fn presence_events_newest_first(fx: &mut Fixture) {
    let id = InstanceId::new("gw-ev").unwrap();
    let other = InstanceId::new("gw-other").unwrap();
    let states = [Presence::Online, Presence::Stale, Presence::Offline];
    let mut events: Vec<PresenceEvent> = (0..25)
        .map(|i| PresenceEvent {
            region: region("cn-hangzhou"),
            instance_id: id.clone(),
            state: states[i % 3],
            reason: Some(format!("r{i}")),
            // Pairs share a time: the order within one comes from insertion.
            at_ms: 1_000 + (i as i64 / 2),
        })
        .collect();
    events.push(PresenceEvent {
        region: region("cn-hangzhou"),
        instance_id: other.clone(),
        state: Presence::Online,
        reason: None,
        at_ms: 5_000,
    });
    fx.store.record_presence_events(&events).await.unwrap();
    let mut got = Vec::new();
    let mut cursor = None;
    loop {
        let page = fx
            .store
            .list_presence_events(&region("cn-hangzhou"), &id, limit(10), cursor.as_deref())
            .await
            .unwrap();
        got.extend(page.items);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let mut expected: Vec<PresenceEvent> = events[..25].to_vec();
    expected.reverse();
    assert_eq!(got, expected);
    // A cursor of one instance's events is refused for another's.
    let first = fx
        .store
        .list_presence_events(&region("cn-hangzhou"), &id, limit(5), None)
        .await
        .unwrap();
    let err = fx
        .store
        .list_presence_events(
            &region("cn-hangzhou"),
            &other,
            limit(5),
            first.next_cursor.as_deref(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
}

async fn tokens_store_only_a_hash(fx: &mut Fixture) {
    let s = &fx.store;
    let secret = TokenSecret::generate().unwrap();
    let token = NewToken {
        name: TokenName::new("ops").unwrap(),
        hash: secret.hash(),
        scopes: vec![Scope::Operate, Scope::Audit],
        groups: vec![GroupId::new("GID_a").unwrap()],
        created_ms: 1_000,
    };
    let created = s.create_token(&token).await.unwrap();
    assert_eq!(created.scopes, vec![Scope::Operate, Scope::Audit]);
    let found = s
        .find_token(&TokenHash::of(secret.expose()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found, created);
    assert_eq!(
        s.find_token(&TokenHash::of("csgc_wrong")).await.unwrap(),
        None
    );

    // The name is unique; so is the secret.
    let err = s.create_token(&token).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    let mut same_secret = token.clone();
    same_secret.name = TokenName::new("ops2").unwrap();
    let err = s.create_token(&same_secret).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");

    let reader = TokenSecret::generate().unwrap();
    s.create_token(&NewToken {
        name: TokenName::new("dashboard").unwrap(),
        hash: reader.hash(),
        scopes: vec![Scope::Read],
        groups: vec![],
        created_ms: 2_000,
    })
    .await
    .unwrap();
    let names: Vec<String> = s
        .list_tokens()
        .await
        .unwrap()
        .iter()
        .map(|t| t.name.to_string())
        .collect();
    assert_eq!(names, ["dashboard", "ops"]);

    // The plaintext is nowhere in the database; its hash is.
    let plain = secret.expose().to_owned();
    let random_part = plain["csgc_".len()..].to_owned();
    let hash_hex: String = secret
        .hash()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    match &fx.backing {
        Backing::Sqlite(dir) => {
            let conn_url = fx.url.clone();
            let mut conn: sqlx::SqliteConnection =
                sqlx::Connection::connect(&conn_url).await.unwrap();
            let dump: String = sqlx::query_scalar(
                "SELECT group_concat(name || ' ' || hex(secret_hash) || ' ' || scopes || ' ' || \
                 groups, '|') FROM tokens",
            )
            .fetch_one(&mut conn)
            .await
            .unwrap();
            assert!(dump.to_lowercase().contains(&hash_hex), "{dump}");
            assert!(!dump.contains(&random_part));
            // And not in the file's bytes either (the database, its WAL).
            for entry in std::fs::read_dir(dir.path()).unwrap() {
                let bytes = std::fs::read(entry.unwrap().path()).unwrap();
                assert!(!bytes
                    .windows(random_part.len())
                    .any(|w| w == random_part.as_bytes()));
            }
        }
        Backing::Postgres(server) => {
            let mut conn: sqlx::PgConnection = sqlx::Connection::connect(&fx.url).await.unwrap();
            let dump: String = sqlx::query_scalar("SELECT string_agg(t::text, '|') FROM tokens t")
                .fetch_one(&mut conn)
                .await
                .unwrap();
            assert!(dump.contains(&hash_hex), "{dump}");
            assert!(!dump.contains(&random_part));
            sqlx::query("CHECKPOINT").execute(&mut conn).await.unwrap();
            let mut stack = vec![server.data_dir()];
            while let Some(dir) = stack.pop() {
                for entry in std::fs::read_dir(dir).unwrap() {
                    let path = entry.unwrap().path();
                    if path.is_dir() {
                        stack.push(path);
                    } else if let Ok(bytes) = std::fs::read(&path) {
                        assert!(
                            !bytes
                                .windows(random_part.len())
                                .any(|w| w == random_part.as_bytes()),
                            "plaintext in {}",
                            path.display()
                        );
                    }
                }
            }
        }
    }

    // Revoked: no longer found, listed with its time; revoking twice does nothing.
    assert!(s
        .revoke_token(&TokenName::new("ops").unwrap(), 9_000)
        .await
        .unwrap());
    assert!(!s
        .revoke_token(&TokenName::new("ops").unwrap(), 9_500)
        .await
        .unwrap());
    assert!(!s
        .revoke_token(&TokenName::new("nobody").unwrap(), 9_500)
        .await
        .unwrap());
    assert_eq!(s.find_token(&secret.hash()).await.unwrap(), None);
    let ops = s
        .list_tokens()
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.name.as_str() == "ops")
        .unwrap();
    assert_eq!(ops.revoked_ms, Some(9_000));
}

async fn bulk_upsert_of_10k_rows(fx: &mut Fixture) {
    let rows: Vec<InstanceRow> = (0..10_000)
        .map(|i| instance("cn-hangzhou", &format!("gw-{i:05}"), 1_000 + i))
        .collect();
    let started = Instant::now();
    fx.store.upsert_instances(&rows).await.unwrap();
    let insert = started.elapsed();
    let updated: Vec<InstanceRow> = rows
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.updated_ms += 1;
            r
        })
        .collect();
    let started = Instant::now();
    fx.store.upsert_instances(&updated).await.unwrap();
    let update = started.elapsed();
    // A deep page costs what the first one does.
    let all = InstanceFilter::default();
    let first = fx
        .store
        .list_instances(&all, ORDER, limit(100), None)
        .await
        .unwrap();
    let started = Instant::now();
    let mut cursor = first.next_cursor;
    let mut n = first.items.len();
    let mut deep = None;
    while let Some(c) = cursor {
        if n == 9_900 {
            deep = Some(c.clone());
        }
        let page = fx
            .store
            .list_instances(&all, ORDER, limit(100), Some(&c))
            .await
            .unwrap();
        n += page.items.len();
        cursor = page.next_cursor;
    }
    let paging = started.elapsed();
    assert_eq!(n, 10_000);
    let deep = deep.unwrap();
    let mut took = Vec::new();
    for cursor in [None, Some(deep.as_str())] {
        let started = Instant::now();
        for _ in 0..20 {
            let page = fx
                .store
                .list_instances(&all, ORDER, limit(100), cursor)
                .await
                .unwrap();
            assert_eq!(page.items.len(), 100);
        }
        took.push(started.elapsed() / 20);
    }
    let last = fx
        .store
        .get_instance(
            &region("cn-hangzhou"),
            &InstanceId::new("gw-09999").unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(last.updated_ms, 1_000 + 9_999 + 1);
    println!(
        "{:?}: 10k rows inserted in {insert:?}, updated in {update:?}; 100 pages of 100 in \
         {paging:?}; a page of 100: the first {:?}, the 100th {:?}",
        fx.store.engine(),
        took[0],
        took[1]
    );
}

/// PostgreSQL killed: every operation says `Unavailable` (within the acquire timeout), and the
/// same store works again once the server is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_killed_is_unavailable_and_restarted_works_again() {
    let mut fx = postgres().await;
    fx.store
        .upsert_instances(&[instance("cn-hangzhou", "gw-1", 10)])
        .await
        .unwrap();
    let Backing::Postgres(server) = &mut fx.backing else {
        unreachable!()
    };
    server.kill();
    let started = Instant::now();
    let err = fx.store.ping().await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    let err = fx
        .store
        .upsert_instances(&[instance("cn-hangzhou", "gw-2", 20)])
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    let err = fx
        .store
        .list_instances(&InstanceFilter::default(), ORDER, limit(10), None)
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    let err = fx.store.find_token(&TokenHash::of("x")).await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "unavailability took {:?} to report",
        started.elapsed()
    );
    // Opening a store while the server is down is unavailable too, not a crash.
    let Err(err) = store::open_with(&fx.url, &options()).await else {
        panic!("opened a store on a dead server")
    };
    assert!(err.is_unavailable(), "{err:?}");

    let Backing::Postgres(mut server) = std::mem::replace(
        &mut fx.backing,
        Backing::Sqlite(tempfile::tempdir().unwrap()),
    ) else {
        unreachable!()
    };
    let server = tokio::task::spawn_blocking(move || server.restart().map(|()| server))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("PostgreSQL did not restart: {e}"));
    fx.backing = Backing::Postgres(server);

    fx.store.ping().await.unwrap();
    fx.store
        .upsert_instances(&[instance("cn-hangzhou", "gw-2", 20)])
        .await
        .unwrap();
    let page = fx
        .store
        .list_instances(&InstanceFilter::default(), ORDER, limit(10), None)
        .await
        .unwrap();
    assert_eq!(page.items.len(), 2);
}

/// SQLite held by another writer past the busy timeout: `Unavailable`, and the store writes again
/// once the lock is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_locked_by_another_writer_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("console.db").display());
    let opts = StoreOptions {
        busy_timeout: Duration::from_millis(300),
        ..options()
    };
    let s = store::open_with(&url, &opts).await.unwrap();
    let mut other: sqlx::SqliteConnection = sqlx::Connection::connect(&url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();
    let err = s
        .upsert_instances(&[instance("cn-hangzhou", "gw-1", 10)])
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    // Readers are not blocked by a writer (WAL).
    s.list_instances(&InstanceFilter::default(), ORDER, limit(10), None)
        .await
        .unwrap();
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    s.upsert_instances(&[instance("cn-hangzhou", "gw-1", 10)])
        .await
        .unwrap();
}

#[tokio::test]
async fn in_memory_sqlite_and_unknown_urls_are_refused() {
    for url in ["sqlite::memory:", "mysql://localhost/db", "console.db"] {
        match store::open(url).await {
            Ok(_) => panic!("{url} opened"),
            Err(e) => assert!(matches!(e, StoreError::Invalid(_)), "{url}: {e:?}"),
        }
    }
}

/// SQLite migrations take no lock: several stores opening one new file at once must still all
/// open (the losers of the race find the schema applied on their second look).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_new_file_opened_by_several_at_once() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..20 {
        let url = format!(
            "sqlite://{}",
            dir.path().join(format!("{round}.db")).display()
        );
        let opens: Vec<_> = (0..4)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { store::open_with(&url, &options()).await })
            })
            .collect();
        for open in opens {
            let s = open
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            s.ping().await.unwrap();
            s.close().await;
        }
    }
}

// --- webhooks and metrics ---

both_engines!(
    webhook_deliveries_are_claimed_once_retried_and_paged,
    instances_are_counted_by_presence,
);

fn delivery(n: i64) -> store::NewDelivery {
    store::NewDelivery {
        webhook: if n % 2 == 0 { "even" } else { "odd" }.to_owned(),
        event_type: "presence".to_owned(),
        payload: format!("{{\"event_id\":{n}}}"),
        created_ms: 1_000 + n,
    }
}

async fn webhook_deliveries_are_claimed_once_retried_and_paged(fx: &mut Fixture) {
    use store::{Attempt, DeliveryFilter, DeliveryState};
    let s = &fx.store;
    assert_eq!(s.pending_deliveries().await.unwrap(), (0, None));
    s.enqueue_deliveries(&(0..5).map(delivery).collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(s.pending_deliveries().await.unwrap(), (5, Some(1_000)));

    // Due at 1002: the first three, oldest first; leased, so a second claim finds none of them.
    let first = s.claim_due_deliveries(1_002, 60_000, 10).await.unwrap();
    let payloads: Vec<&str> = first.iter().map(|d| d.payload.as_str()).collect();
    assert_eq!(
        payloads,
        ["{\"event_id\":0}", "{\"event_id\":1}", "{\"event_id\":2}"]
    );
    assert!(first
        .iter()
        .all(|d| d.state == DeliveryState::Pending && d.attempts == 0));
    assert!(s
        .claim_due_deliveries(1_002, 60_000, 10)
        .await
        .unwrap()
        .is_empty());
    // Claims racing each other split the rest: nothing is handed out twice.
    let (a, b) = tokio::join!(
        s.claim_due_deliveries(2_000, 60_000, 1),
        s.claim_due_deliveries(2_000, 60_000, 1)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.len() + b.len(), 2, "{a:?} {b:?}");
    assert!(a.iter().all(|x| b.iter().all(|y| x.id != y.id)));

    // Attempts: delivered; retried later; failed for good.
    let (d0, d1, d2) = (first[0].id, first[1].id, first[2].id);
    s.record_delivery_attempt(
        d0,
        &Attempt::Delivered {
            status: 204,
            at_ms: 3_000,
        },
    )
    .await
    .unwrap();
    s.record_delivery_attempt(
        d1,
        &Attempt::Retry {
            status: Some(500),
            error: "HTTP 500".into(),
            at_ms: 3_000,
            next_attempt_ms: 70_000,
        },
    )
    .await
    .unwrap();
    s.record_delivery_attempt(
        d2,
        &Attempt::Failed {
            status: None,
            error: "connection refused".into(),
            at_ms: 3_000,
        },
    )
    .await
    .unwrap();
    // The retry is due again at its time (after the lease), and counted its attempt.
    assert!(s
        .claim_due_deliveries(69_999, 200_000, 10)
        .await
        .unwrap()
        .iter()
        .all(|d| d.id != d1));
    let again = s.claim_due_deliveries(70_000, 200_000, 10).await.unwrap();
    let retried = again.iter().find(|d| d.id == d1).unwrap();
    assert_eq!(retried.attempts, 1);
    assert_eq!(retried.last_status, Some(500));
    assert_eq!(retried.last_error.as_deref(), Some("HTTP 500"));

    // Paged newest first, filtered.
    let page = s
        .list_deliveries(&DeliveryFilter::default(), limit(2), None)
        .await
        .unwrap();
    assert_eq!(page.items.len(), 2);
    let rest = s
        .list_deliveries(
            &DeliveryFilter::default(),
            limit(10),
            page.next_cursor.as_deref(),
        )
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 3);
    assert!(rest.next_cursor.is_none());
    let mut ids: Vec<i64> = page.items.iter().chain(&rest.items).map(|d| d.id).collect();
    let sorted = {
        let mut v = ids.clone();
        v.sort_unstable_by(|a, b| b.cmp(a));
        v
    };
    assert_eq!(ids, sorted, "newest first");
    ids.dedup();
    assert_eq!(ids.len(), 5);
    let delivered = s
        .list_deliveries(
            &DeliveryFilter {
                state: Some(DeliveryState::Delivered),
                webhook: None,
            },
            limit(10),
            None,
        )
        .await
        .unwrap();
    assert_eq!(delivered.items.len(), 1);
    assert_eq!(delivered.items[0].id, d0);
    assert_eq!(delivered.items[0].delivered_ms, Some(3_000));
    assert_eq!(delivered.items[0].last_status, Some(204));
    let failed = s
        .list_deliveries(
            &DeliveryFilter {
                state: Some(DeliveryState::Failed),
                webhook: Some("even".into()),
            },
            limit(10),
            None,
        )
        .await
        .unwrap();
    assert_eq!(failed.items.len(), 1);
    assert_eq!(failed.items[0].id, d2);
    // A cursor under another filter is refused.
    assert!(matches!(
        s.list_deliveries(
            &DeliveryFilter {
                state: Some(DeliveryState::Pending),
                webhook: None
            },
            limit(10),
            page.next_cursor.as_deref()
        )
        .await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(s.pending_deliveries().await.unwrap().0, 3);
}

async fn instances_are_counted_by_presence(fx: &mut Fixture) {
    assert!(fx
        .store
        .count_instances_by_presence()
        .await
        .unwrap()
        .is_empty());
    let mut rows = vec![
        instance("r1", "a", 1),
        instance("r1", "b", 1),
        instance("r2", "c", 1),
    ];
    rows[1].presence = Presence::Offline;
    fx.store.upsert_instances(&rows).await.unwrap();
    let counts = fx.store.count_instances_by_presence().await.unwrap();
    assert_eq!(
        counts,
        vec![
            ("r1".to_owned(), Presence::Offline, 1),
            ("r1".to_owned(), Presence::Online, 1),
            ("r2".to_owned(), Presence::Online, 1),
        ]
    );
}

// --- calls and audit ---

fn call(id: &str, instance: &str, started_ms: i64) -> CallRecord {
    CallRecord {
        id: RequestId::new(id).unwrap(),
        region: region("cn-hangzhou"),
        instance_id: InstanceId::new(instance).unwrap(),
        method: "smb.user.set".to_owned(),
        params: json!({"username": "alice", "password": "<redacted>"}),
        request_hash: format!("hash-{id}"),
        token_name: Some("ops".to_owned()),
        state: CallState::Pending,
        reply: None,
        error: None,
        started_ms,
        finished_ms: None,
        timeout_ms: Some(10_000),
    }
}

async fn calls_are_stored_once_and_an_answer_is_final(fx: &mut Fixture) {
    let s = &fx.store;
    let c = call("req-1", "gw-1", 100);
    assert_eq!(s.insert_call(&c).await.unwrap(), CallInsert::Inserted);
    // The same id again finds the first row, whatever the second one says.
    let mut other = call("req-1", "gw-2", 200);
    other.request_hash = "another".to_owned();
    match s.insert_call(&other).await.unwrap() {
        CallInsert::Existing(found) => assert_eq!(*found, c),
        got => panic!("{got:?}"),
    }
    let reply = json!({"v": 1, "id": "req-1", "ok": true, "result": {"created": true}});
    s.finish_call(&c.id, CallState::Answered, Some(&reply), None, 150)
        .await
        .unwrap();
    // A later failure (a re-send that timed out) never overwrites the answer.
    s.finish_call(&c.id, CallState::Failed, None, Some("timeout"), 160)
        .await
        .unwrap();
    let got = s.get_call(&c.id).await.unwrap().unwrap();
    assert_eq!(got.state, CallState::Answered);
    assert_eq!(got.reply, Some(reply));
    assert_eq!(got.finished_ms, Some(150));
    assert_eq!(got.params["password"], "<redacted>");
    assert!(s
        .get_call(&RequestId::new("nope").unwrap())
        .await
        .unwrap()
        .is_none());

    // Newest first, keyset paged, each once; other instances left out.
    for i in 0..5 {
        s.insert_call(&call(&format!("p-{i}"), "gw-9", 1_000 + i))
            .await
            .unwrap();
    }
    s.insert_call(&call("p-same-ms", "gw-9", 1_004))
        .await
        .unwrap();
    s.insert_call(&call("x-1", "gw-8", 5_000)).await.unwrap();
    let gw9 = InstanceId::new("gw-9").unwrap();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = s
            .list_calls(&region("cn-hangzhou"), &gw9, limit(2), cursor.as_deref())
            .await
            .unwrap();
        seen.extend(page.items.iter().map(|c| c.id.as_str().to_owned()));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, ["p-same-ms", "p-4", "p-3", "p-2", "p-1", "p-0"]);
}

fn stale(now_ms: i64, limit: u32) -> StaleCalls {
    StaleCalls {
        region: region("cn-hangzhou"),
        now_ms,
        margin_ms: 10_000,
        default_timeout_ms: 120_000,
        lease_until_ms: now_ms + 130_000,
        limit,
    }
}

/// The sweeper's claim: only calls of its region still pending past their own budget plus the
/// margin (the default budget for rows stored without one); two claims at once never take one
/// call both; a claimed call is leased, and taken again once the lease has passed.
async fn stale_pending_calls_are_claimed_once_and_leased(fx: &mut Fixture) {
    let s = &fx.store;
    let now = 1_000_000_000;
    let mut rows = Vec::new();
    // Past their 1 s budget and the 10 s margin: taken.
    for i in 0..20 {
        let mut c = call(&format!("old-{i:02}"), "gw-1", now - 11_001 - i);
        c.timeout_ms = Some(1_000);
        rows.push(c);
    }
    // Still within budget + margin.
    let mut young = call("young", "gw-1", now - 10_999);
    young.timeout_ms = Some(1_000);
    rows.push(young);
    // No budget stored: 120 s assumed; 60 s old is not enough, 131 s is.
    let mut unknown_young = call("nobudget-young", "gw-1", now - 60_000);
    unknown_young.timeout_ms = None;
    rows.push(unknown_young);
    let mut unknown_old = call("nobudget-old", "gw-1", now - 131_000);
    unknown_old.timeout_ms = None;
    rows.push(unknown_old);
    // Finished, or another region's.
    let mut answered = call("answered", "gw-1", now - 500_000);
    answered.state = CallState::Answered;
    answered.reply = Some(json!({"ok": true}));
    rows.push(answered);
    let mut failed = call("failed", "gw-1", now - 500_000);
    failed.state = CallState::Failed;
    rows.push(failed);
    let mut elsewhere = call("elsewhere", "gw-1", now - 500_000);
    elsewhere.region = region("cn-shanghai");
    rows.push(elsewhere);
    for r in &rows {
        assert_eq!(s.insert_call(r).await.unwrap(), CallInsert::Inserted);
    }
    let mut want: Vec<String> = (0..20).map(|i| format!("old-{i:02}")).collect();
    want.push("nobudget-old".to_owned());
    want.sort();

    // Two claimers at once, in batches of 5, until nothing is left: each call taken by one.
    let claim = |store: Arc<dyn Store>| async move {
        let mut got = Vec::new();
        loop {
            let batch = store.claim_stale_calls(&stale(now, 5)).await.unwrap();
            if batch.is_empty() {
                return got;
            }
            assert!(batch.len() <= 5);
            got.extend(batch.into_iter().map(|c| c.id.as_str().to_owned()));
        }
    };
    let (a, b) = tokio::join!(
        tokio::spawn(claim(s.clone())),
        tokio::spawn(claim(s.clone()))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut all: Vec<String> = a.iter().chain(b.iter()).cloned().collect();
    all.sort();
    assert_eq!(all, want, "taken by {a:?} and {b:?}");
    // Oldest first within a claim, and the rows are returned whole.
    let one = s
        .get_call(&RequestId::new("old-03").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(one.state, CallState::Pending);
    assert_eq!(one.timeout_ms, Some(1_000));

    // Leased: until the lease (130 s) has passed only the calls that came of age since are
    // taken; then the first ones again.
    let ids = |v: Vec<CallRecord>| {
        let mut v: Vec<String> = v.into_iter().map(|c| c.id.as_str().to_owned()).collect();
        v.sort();
        v
    };
    assert_eq!(
        ids(s
            .claim_stale_calls(&stale(now + 129_000, 100))
            .await
            .unwrap()),
        ["nobudget-young", "young"]
    );
    assert_eq!(
        ids(s
            .claim_stale_calls(&stale(now + 130_000, 100))
            .await
            .unwrap()),
        want
    );
    let mut later = want.clone();
    later.extend(["young".to_owned(), "nobudget-young".to_owned()]);
    let first = s.claim_stale_calls(&stale(now + 300_000, 1)).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].id.as_str(), "nobudget-old", "oldest first");

    // A finished call is never taken, even with a lapsed lease.
    s.finish_call(
        &RequestId::new("old-00").unwrap(),
        CallState::Failed,
        None,
        Some("x"),
        now,
    )
    .await
    .unwrap();
    let rest = s
        .claim_stale_calls(&stale(now + 400_000, 100))
        .await
        .unwrap();
    assert!(rest.iter().all(|c| c.id.as_str() != "old-00"), "{rest:?}");
    assert_eq!(
        rest.len(),
        later.len() - 2,
        "nobudget-old still leased, old-00 finished"
    );
}

/// Stands in for the broker and the agent in the sweeper's test, which is about the store and
/// the service's bookkeeping (the end-to-end test in calls_e2e uses a real agent): records what
/// is sent and answers it.
#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<csg_consoled::rpc::CallSpec>>);

#[async_trait::async_trait]
impl csg_consoled::rpc::Caller for Recorder {
    async fn call(
        &self,
        spec: &csg_consoled::rpc::CallSpec,
    ) -> Result<csg_protocol::Reply, csg_console::CallError> {
        self.0.lock().unwrap().push(spec.clone());
        Ok(csg_protocol::Reply::ok(
            spec.id.clone(),
            json!({"reconciled": true}),
        ))
    }
}

/// Calls left pending: a young one whose request was stored whole is sent again under its id
/// with its own budget and ends answered; one first sent longer ago than agents remember ids,
/// and one whose params were stored redacted, end failed UNKNOWN_OUTCOME (audited) without
/// being sent; one still within its budget is left alone; nothing is taken while the broker
/// link is down.
async fn the_sweeper_resends_young_calls_and_ends_the_rest_unknown(fx: &mut Fixture) {
    use csg_consoled::calls::{self, CallService, Swept};
    let now = csg_consoled::now_ms();
    let gw = InstanceId::new("gw-1").unwrap();
    let pending =
        |id: &str, method: &str, params: serde_json::Value, hash: String, age: i64| CallRecord {
            id: RequestId::new(id).unwrap(),
            region: region("cn-hangzhou"),
            instance_id: gw.clone(),
            method: method.to_owned(),
            params,
            request_hash: hash,
            token_name: Some("ops".to_owned()),
            state: CallState::Pending,
            reply: None,
            error: None,
            started_ms: now - age,
            finished_ms: None,
            timeout_ms: Some(2_000),
        };
    let empty = serde_json::Map::new();
    let whole = calls::request_hash(&gw, "sys.reconcile", &empty);
    let mut secret = serde_json::Map::new();
    secret.insert("username".into(), json!("alice"));
    secret.insert("password".into(), json!("Secret-1234"));
    let rows = [
        pending("young", "sys.reconcile", json!({}), whole.clone(), 30_000),
        pending(
            "old",
            "sys.reconcile",
            json!({}),
            whole.clone(),
            calls::AGENT_ID_MEMORY_MS,
        ),
        pending(
            "redacted",
            "smb.user.set",
            json!({"username": "alice", "password": "<redacted>"}),
            calls::request_hash(&gw, "smb.user.set", &secret),
            30_000,
        ),
        pending("fresh", "sys.reconcile", json!({}), whole.clone(), 1_000),
    ];
    for r in &rows {
        fx.store.insert_call(r).await.unwrap();
    }
    let recorder = Arc::new(Recorder::default());
    let (link_tx, link) = tokio::sync::watch::channel(csg_transport::LinkState::Down(None));
    let svc = Arc::new(CallService {
        store: fx.store.clone(),
        caller: recorder.clone(),
        region: region("cn-hangzhou"),
        bus: csg_consoled::events::Bus::default(),
        metrics: csg_consoled::metrics::Metrics::new(),
        link,
        ids: csg_console::IdGenerator::new("sweep-test"),
        in_flight: Arc::default(),
    });
    assert!(
        svc.sweep().await.unwrap().is_empty(),
        "swept with the broker down"
    );
    link_tx.send_replace(csg_transport::LinkState::Ready(1));
    let mut done = svc.sweep().await.unwrap();
    done.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    let done: Vec<(&str, bool)> = done
        .iter()
        .map(|(id, s)| (id.as_str(), *s == Swept::Resent))
        .collect();
    assert_eq!(
        done,
        [("old", false), ("redacted", false), ("young", true)],
        "fresh is within its budget and margin"
    );
    assert!(svc.in_flight.wait_idle(Duration::from_secs(10)).await);
    let sent = recorder.0.lock().unwrap().clone();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].id.as_str(), "young");
    assert_eq!(sent[0].method.as_str(), "sys.reconcile");
    assert_eq!(sent[0].timeout, Duration::from_secs(2), "its own budget");

    let get = |id: &'static str| {
        let store = fx.store.clone();
        async move {
            store
                .get_call(&RequestId::new(id).unwrap())
                .await
                .unwrap()
                .unwrap()
        }
    };
    let young = get("young").await;
    assert_eq!(young.state, CallState::Answered);
    assert_eq!(young.reply.unwrap()["result"]["reconciled"], true);
    for id in ["old", "redacted"] {
        let c = get(id).await;
        assert_eq!(c.state, CallState::Failed, "{id}");
        let error = c.error.unwrap_or_default();
        assert!(error.starts_with("UNKNOWN_OUTCOME: "), "{id}: {error}");
    }
    assert!(get("redacted").await.error.unwrap().contains("redacted"));
    assert_eq!(get("fresh").await.state, CallState::Pending);
    let audit = fx
        .store
        .list_audit(
            &AuditFilter {
                outcome: Some("unknown_outcome".to_owned()),
                ..AuditFilter::default()
            },
            limit(10),
            None,
        )
        .await
        .unwrap();
    let mut audited: Vec<_> = audit
        .items
        .iter()
        .map(|a| a.event.request_id.clone().unwrap_or_default())
        .collect();
    audited.sort();
    assert_eq!(audited, ["old", "redacted"]);
    // Taken once: the next sweep finds nothing (answered, failed, or too young).
    assert!(svc.sweep().await.unwrap().is_empty());
}

fn audit_event(at_ms: i64, action: &str, outcome: &str, token: Option<&str>) -> AuditEvent {
    AuditEvent {
        at_ms,
        region: region("cn-hangzhou"),
        token_name: token.map(str::to_owned),
        remote_addr: Some("127.0.0.1:5555".to_owned()),
        action: action.to_owned(),
        instance_id: Some("gw-1".to_owned()),
        method: Some("nfs.export.create".to_owned()),
        params: Some(json!({"name": "vol1"})),
        outcome: outcome.to_owned(),
        request_id: Some(format!("r-{at_ms}")),
    }
}

async fn audit_is_paged_newest_first_and_filtered(fx: &mut Fixture) {
    let s = &fx.store;
    for i in 0..7 {
        let (action, outcome, token) = if i % 3 == 0 {
            ("refused", "403", Some("reader"))
        } else {
            ("call", "ok", Some("ops"))
        };
        s.record_audit(&audit_event(1_000 + i, action, outcome, token))
            .await
            .unwrap();
    }
    s.record_audit(&audit_event(1_003, "refused", "401", None))
        .await
        .unwrap();
    let all = |f: AuditFilter| async move {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = s.list_audit(&f, limit(3), cursor.as_deref()).await.unwrap();
            out.extend(page.items.into_iter().map(|a| a.event));
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        out
    };
    let every = all(AuditFilter::default()).await;
    assert_eq!(every.len(), 8);
    let times: Vec<i64> = every.iter().map(|e| e.at_ms).collect();
    assert_eq!(times, [1006, 1005, 1004, 1003, 1003, 1002, 1001, 1000]);
    let refused = all(AuditFilter {
        action: Some("refused".to_owned()),
        ..AuditFilter::default()
    })
    .await;
    assert_eq!(refused.len(), 4);
    let by_reader = all(AuditFilter {
        token_name: Some("reader".to_owned()),
        outcome: Some("403".to_owned()),
        since_ms: Some(1_001),
        until_ms: Some(1_006),
        ..AuditFilter::default()
    })
    .await;
    assert_eq!(
        by_reader.iter().map(|e| e.at_ms).collect::<Vec<_>>(),
        [1003]
    );
    assert_eq!(
        every[0],
        audit_event(1_006, "refused", "403", Some("reader"))
    );
    // A cursor is bound to its filter.
    let page = s
        .list_audit(&AuditFilter::default(), limit(1), None)
        .await
        .unwrap();
    let cursor = page.next_cursor.unwrap();
    let other = AuditFilter {
        action: Some("call".to_owned()),
        ..AuditFilter::default()
    };
    assert!(s.list_audit(&other, limit(1), Some(&cursor)).await.is_err());
}

// --- event log ---

both_engines!(
    event_log_dedupes_presence_across_replicas_and_delivers_once,
    event_log_ids_become_visible_in_order_under_concurrent_writers,
    event_log_is_pruned_by_age_and_count,
    event_log_bulk_of_10k_presence_events,
);

fn log_presence(instance: &str, to: &str, since_ms: i64, origin: &str) -> store::NewLogEvent {
    store::NewLogEvent {
        kind: "presence",
        region: Some("r1".into()),
        instance_id: Some(instance.into()),
        group_id: Some("GID_a".into()),
        created_by: None,
        presence: Some((to.into(), since_ms)),
        data: format!("{{\"type\":\"presence\",\"instance_id\":\"{instance}\",\"to\":\"{to}\"}}"),
        origin: origin.into(),
        at_ms: 1_000 + since_ms,
    }
}

fn log_call(n: i64, origin: &str) -> store::NewLogEvent {
    store::NewLogEvent {
        kind: "call",
        region: Some("r1".into()),
        instance_id: Some("gw-1".into()),
        group_id: Some("GID_a".into()),
        created_by: None,
        presence: None,
        data: format!("{{\"type\":\"call\",\"n\":{n}}}"),
        origin: origin.into(),
        at_ms: 1_000 + n,
    }
}

fn log_job(created_by: &str, origin: &str) -> store::NewLogEvent {
    store::NewLogEvent {
        kind: "job",
        region: None,
        instance_id: None,
        group_id: None,
        created_by: Some(created_by.into()),
        presence: None,
        data: "{\"type\":\"job\",\"id\":\"j-1\",\"state\":\"running\"}".into(),
        origin: origin.into(),
        at_ms: 1_005,
    }
}

fn hooks() -> Vec<store::HookKinds> {
    vec![
        store::HookKinds {
            webhook: "ops".into(),
            kinds: vec!["presence"],
        },
        store::HookKinds {
            webhook: "all".into(),
            kinds: vec!["presence", "call", "job"],
        },
    ]
}

/// Two replicas (two stores on one database) log the presence changes both saw: each change
/// is logged once and delivered once per webhook, whoever came first; their own calls are
/// logged whole.
async fn event_log_dedupes_presence_across_replicas_and_delivers_once(fx: &mut Fixture) {
    let a = fx.store.clone();
    let b = store::open_with(&fx.url, &options()).await.unwrap();
    let log_a = a.event_log();
    let hooks = hooks();
    // A sees the gateway go offline (agent clock 10), come back (20), go stale (its clock 31).
    let ids = log_a
        .append_events(
            &[
                log_presence("gw-1", "offline", 10, "a"),
                log_presence("gw-1", "online", 20, "a"),
                log_call(1, "a"),
                log_job("team-a", "a"),
                log_presence("gw-1", "stale", 31, "a"),
            ],
            &hooks,
        )
        .await
        .unwrap();
    assert!(ids.iter().all(Option::is_some), "{ids:?}");
    // B, a little behind, saw the same: the agent-clock changes by their (state, since), the
    // stale one (its own clock, 33) because the gateway's last logged state is stale already.
    // Its own call and a change A did not log go in.
    let ids = b
        .event_log()
        .append_events(
            &[
                log_presence("gw-1", "offline", 10, "b"),
                log_presence("gw-1", "online", 20, "b"),
                log_presence("gw-1", "stale", 33, "b"),
                log_call(2, "b"),
                log_presence("gw-2", "offline", 40, "b"),
            ],
            &hooks,
        )
        .await
        .unwrap();
    assert_eq!(ids[..3], [None, None, None], "{ids:?}");
    assert!(ids[3].is_some() && ids[4].is_some(), "{ids:?}");
    let rows = log_a.events_after(0, 100).await.unwrap();
    let kinds: Vec<&str> = rows.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["presence", "presence", "call", "job", "presence", "call", "presence"]
    );
    assert!(rows.windows(2).all(|w| w[0].id < w[1].id));
    // The job's creator is kept beside it (its column), for the streams' filter.
    let creators: Vec<Option<&str>> = rows.iter().map(|r| r.created_by.as_deref()).collect();
    assert_eq!(
        creators,
        [None, None, None, Some("team-a"), None, None, None]
    );
    // 4 presence events × 2 hooks + 2 calls and a job × 1 hook.
    assert_eq!(fx.store.pending_deliveries().await.unwrap().0, 11);
    let claimed = fx
        .store
        .claim_due_deliveries(i64::MAX / 2, i64::MAX / 2 + 1, 100)
        .await
        .unwrap();
    let first = &rows[0];
    let body: serde_json::Value = serde_json::from_str(
        &claimed
            .iter()
            .find(|d| {
                d.webhook == "ops" && d.payload.contains("offline") && d.payload.contains("gw-1")
            })
            .unwrap()
            .payload,
    )
    .unwrap();
    assert_eq!(body["event_id"], first.id, "{body}");
    assert_eq!(body["to"], "offline");
    // The gateway flaps for real afterwards: a new change, logged.
    let ids = b
        .event_log()
        .append_events(&[log_presence("gw-1", "online", 50, "b")], &hooks)
        .await
        .unwrap();
    assert!(ids[0].is_some());
    b.close().await;
}

/// Ids never become visible out of order: two writers append batches at once while a reader
/// follows "ids above the last seen"; the reader sees every id the writers got, in order.
async fn event_log_ids_become_visible_in_order_under_concurrent_writers(fx: &mut Fixture) {
    let other = store::open_with(&fx.url, &options()).await.unwrap();
    let writers: Vec<_> = [fx.store.clone(), other.clone()]
        .into_iter()
        .enumerate()
        .map(|(w, s)| {
            tokio::spawn(async move {
                let mut got = Vec::new();
                for batch in 0..40 {
                    let events: Vec<_> = (0..5)
                        .map(|i| log_call(i64::from(batch * 5 + i), &format!("w{w}")))
                        .collect();
                    let ids = s.event_log().append_events(&events, &[]).await.unwrap();
                    got.extend(ids.into_iter().flatten());
                }
                got
            })
        })
        .collect();
    let reader = fx.store.clone();
    let follow = tokio::spawn(async move {
        let mut last = 0;
        let mut seen = Vec::new();
        while seen.len() < 400 {
            for r in reader.event_log().events_after(last, 50).await.unwrap() {
                assert!(r.id > last);
                last = r.id;
                seen.push(r.id);
            }
            tokio::task::yield_now().await;
        }
        seen
    });
    let mut written = Vec::new();
    for w in writers {
        written.extend(w.await.unwrap());
    }
    written.sort_unstable();
    let seen = tokio::time::timeout(Duration::from_secs(60), follow)
        .await
        .expect("the reader did not see every event")
        .unwrap();
    assert_eq!(
        seen, written,
        "the reader skipped an id that committed late"
    );
    other.close().await;
}

async fn event_log_is_pruned_by_age_and_count(fx: &mut Fixture) {
    let log = fx.store.event_log();
    assert_eq!(log.log_bounds().await.unwrap(), store::LogBounds::default());
    let events: Vec<_> = (0..30).map(|n| log_call(n, "a")).collect();
    let ids = log.append_events(&events, &[]).await.unwrap();
    let ids: Vec<i64> = ids.into_iter().flatten().collect();
    // By age: at_ms is 1000 + n, so the first 10 are older than 1010.
    assert_eq!(log.prune_events(1_010, 1_000).await.unwrap(), 10);
    let b = log.log_bounds().await.unwrap();
    assert_eq!(b.pruned_through, ids[9]);
    assert_eq!(b.newest, ids[29]);
    // By count: the 5 newest stay.
    assert_eq!(log.prune_events(0, 5).await.unwrap(), 15);
    let left = log.events_after(0, 100).await.unwrap();
    assert_eq!(left.iter().map(|r| r.id).collect::<Vec<_>>(), ids[25..]);
    assert_eq!(log.log_bounds().await.unwrap().pruned_through, ids[24]);
    assert_eq!(
        log.prune_events(0, 5).await.unwrap(),
        0,
        "nothing more to remove"
    );
    // Everything gone: the newest id given out is still known.
    assert_eq!(log.prune_events(i64::MAX, 1).await.unwrap(), 5);
    let b = log.log_bounds().await.unwrap();
    assert_eq!((b.newest, b.pruned_through), (ids[29], ids[29]));
    let next = log.append_events(&[log_call(99, "a")], &[]).await.unwrap();
    assert!(next[0].unwrap() > ids[29], "ids are not reused");
}

/// A region going offline at once, as the writer logs it: 10,000 presence changes in batches
/// of 2,000 with a webhook each; then the same again from a second replica (all left out), and
/// a replay read in pages. Timed (`--no-capture` shows the figures).
async fn event_log_bulk_of_10k_presence_events(fx: &mut Fixture) {
    let log = fx.store.event_log();
    let hooks = &hooks()[..1];
    let events: Vec<_> = (0..10_000)
        .map(|i| log_presence(&format!("gw-{i:05}"), "offline", 7, "a"))
        .collect();
    let t = std::time::Instant::now();
    for chunk in events.chunks(2_000) {
        let ids = log.append_events(chunk, hooks).await.unwrap();
        assert!(ids.iter().all(Option::is_some));
    }
    let appended = t.elapsed();
    let t = std::time::Instant::now();
    for chunk in events.chunks(2_000) {
        let ids = log.append_events(chunk, hooks).await.unwrap();
        assert!(ids.iter().all(Option::is_none));
    }
    let repeated = t.elapsed();
    let t = std::time::Instant::now();
    let (mut last, mut n) = (0, 0);
    loop {
        let page = log.events_after(last, 1_000).await.unwrap();
        let Some(r) = page.last() else { break };
        last = r.id;
        n += page.len();
    }
    let replayed = t.elapsed();
    assert_eq!(n, 10_000);
    assert_eq!(fx.store.pending_deliveries().await.unwrap().0, 10_000);
    eprintln!(
        "event log, 10,000 presence changes: appended with deliveries in {} ms, \
         the same from another replica (left out) in {} ms, replayed in pages of 1,000 in {} ms",
        appended.as_millis(),
        repeated.as_millis(),
        replayed.as_millis()
    );
}

// --- web console: sessions and the fleet's summary ---

both_engines!(
    web_sessions_end_at_expiry_sign_out_and_revocation,
    the_fleet_summary_counts_presence_versions_and_drift
);

async fn web_sessions_end_at_expiry_sign_out_and_revocation(fx: &mut Fixture) {
    use store::{NewSession, SessionSecret};
    let s = &fx.store;
    let secret = TokenSecret::generate().unwrap();
    let name = TokenName::new("web").unwrap();
    s.create_token(&NewToken {
        name: name.clone(),
        hash: secret.hash(),
        scopes: vec![Scope::Read],
        groups: vec![],
        created_ms: 1,
    })
    .await
    .unwrap();
    let open = |token: TokenHash, expires_ms: i64| {
        let session = SessionSecret::generate().unwrap();
        let new = NewSession {
            hash: session.hash(),
            token,
            created_ms: 1_000,
            expires_ms,
        };
        (session, new)
    };

    // A session of the token: found until it expires; its secret is not what is stored.
    let (a, new_a) = open(secret.hash(), 10_000);
    assert!(s.create_session(&new_a).await.unwrap());
    let found = s.find_session(&a.hash(), 9_999).await.unwrap().unwrap();
    assert_eq!(found.token.name, name);
    assert_eq!((found.created_ms, found.expires_ms), (1_000, 10_000));
    assert_eq!(s.find_session(&a.hash(), 10_000).await.unwrap(), None);
    let other = SessionSecret::generate().unwrap();
    assert_eq!(s.find_session(&other.hash(), 0).await.unwrap(), None);

    // An unknown token opens nothing.
    let (_, new_x) = open(TokenHash::of("csgc_wrong"), 10_000);
    assert!(!s.create_session(&new_x).await.unwrap());

    // Signing out ends one session; expiry removes the expired ones only.
    let (b, new_b) = open(secret.hash(), 50_000);
    let (c, new_c) = open(secret.hash(), 60_000);
    assert!(s.create_session(&new_b).await.unwrap());
    assert!(s.create_session(&new_c).await.unwrap());
    s.delete_session(&b.hash()).await.unwrap();
    assert_eq!(s.find_session(&b.hash(), 0).await.unwrap(), None);
    assert_eq!(s.delete_expired_sessions(20_000).await.unwrap(), 1);
    assert!(s.find_session(&c.hash(), 20_000).await.unwrap().is_some());

    // Revoking the token ends its sessions at once, and it can open no more.
    assert!(s.revoke_token(&name, 30_000).await.unwrap());
    assert_eq!(s.find_session(&c.hash(), 20_000).await.unwrap(), None);
    let (_, new_d) = open(secret.hash(), 90_000);
    assert!(!s.create_session(&new_d).await.unwrap());
}

async fn the_fleet_summary_counts_presence_versions_and_drift(fx: &mut Fixture) {
    let s = &fx.store;
    let empty = s.fleet_summary(None, &[]).await.unwrap();
    assert_eq!(empty.total, 0);
    let mut rows = vec![
        instance("r1", "a", 1),
        instance("r1", "b", 1),
        instance("r1", "c", 1),
        instance("r2", "d", 1),
    ];
    rows[1].presence = Presence::Offline;
    rows[1].agent_version = Some("0.2.0".to_owned());
    rows[2].presence = Presence::Stale;
    rows[2].agent_version = None;
    rows[2].storage = Some(StorageSummary { count: 3, drift: 2 });
    rows[3].group_id = GroupId::new("GID_other").unwrap();
    s.upsert_instances(&rows).await.unwrap();

    let all = s.fleet_summary(None, &[]).await.unwrap();
    assert_eq!(
        (all.total, all.online, all.stale, all.offline, all.drifting),
        (4, 2, 1, 1, 1)
    );
    let versions: Vec<(Option<&str>, u64)> = all
        .versions
        .iter()
        .map(|(v, n)| (v.as_deref(), *n))
        .collect();
    assert_eq!(
        versions,
        vec![(None, 1), (Some("0.1.0"), 2), (Some("0.2.0"), 1)]
    );
    let r1 = s.fleet_summary(Some(&region("r1")), &[]).await.unwrap();
    assert_eq!((r1.total, r1.online), (3, 1));
    let other = s
        .fleet_summary(None, &[GroupId::new("GID_other").unwrap()])
        .await
        .unwrap();
    assert_eq!((other.total, other.online, other.drifting), (1, 1, 0));
}
