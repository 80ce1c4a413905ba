//! The wire codec: every event round-trips, bad bytes give typed errors (never a panic), and
//! schema evolution keeps old records readable.

// Test code: a failed expectation should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use apache_avro::rabin::Rabin;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use domain::customer::CustomerEvent;
use domain::inventory::InventoryEvent;
use domain::order::{OrderEvent, OrderLine, RejectionReason};
use domain::values::{
    CancellationReason, Currency, CustomerId, CustomerName, Money, OrderId, Quantity, Sku,
};
use schemas::compat::{backward_violations, SchemaVersion};
use schemas::registry::registry;
use schemas::{
    decode, encode, peek, CommandReply, DecodeError, RejectionCode, ReplyOutcome, WireRecord,
};

fn usd(amount: i64) -> Money {
    Money::new(amount, Currency::try_from("USD").unwrap()).unwrap()
}
fn order() -> OrderId {
    OrderId::try_from("0190a5a0-0000-7000-8000-000000000001").unwrap()
}
fn customer() -> CustomerId {
    CustomerId::try_from("c-1").unwrap()
}
fn sku(s: &str) -> Sku {
    Sku::try_from(s).unwrap()
}
fn qty(n: i64) -> Quantity {
    Quantity::try_from(n).unwrap()
}

fn customer_events() -> Vec<CustomerEvent> {
    vec![
        CustomerEvent::CustomerRegistered {
            customer_id: customer(),
            name: CustomerName::try_from("Ada Lovelace").unwrap(),
            credit_limit: usd(100_000),
        },
        CustomerEvent::CreditReserved {
            customer_id: customer(),
            order_id: order(),
            amount: usd(250),
        },
        CustomerEvent::CreditLimitExceeded {
            customer_id: customer(),
            order_id: order(),
            requested: Money::new(9, Currency::try_from("EUR").unwrap()).unwrap(),
            available: usd(3),
        },
        CustomerEvent::CreditReleased {
            customer_id: customer(),
            order_id: order(),
            amount: usd(250),
        },
    ]
}

fn inventory_events() -> Vec<InventoryEvent> {
    vec![
        InventoryEvent::StockAdded {
            sku: sku("apple"),
            quantity: qty(Quantity::MAX.into()),
        },
        InventoryEvent::StockReserved {
            sku: sku("apple"),
            order_id: order(),
            quantity: qty(2),
        },
        InventoryEvent::StockReservationRejected {
            sku: sku("apple"),
            order_id: order(),
            requested: qty(7),
            available: 6,
        },
        InventoryEvent::StockReleased {
            sku: sku("apple"),
            order_id: order(),
            quantity: qty(2),
        },
    ]
}

fn order_events() -> Vec<OrderEvent> {
    vec![
        OrderEvent::OrderPlaced {
            order_id: order(),
            customer_id: customer(),
            lines: vec![
                OrderLine {
                    sku: sku("apple"),
                    quantity: qty(2),
                    unit_price: usd(100),
                },
                OrderLine {
                    sku: sku("pear"),
                    quantity: qty(1),
                    unit_price: usd(50),
                },
            ],
            total: usd(250),
        },
        OrderEvent::OrderApproved { order_id: order() },
        OrderEvent::OrderRejected {
            order_id: order(),
            reason: RejectionReason::CreditLimitExceeded,
            detail: "order total 250 USD exceeds the available credit".into(),
        },
        OrderEvent::OrderCancellationRequested {
            order_id: order(),
            reason: Some(CancellationReason::try_from("changed my mind").unwrap()),
        },
        OrderEvent::OrderCancellationRequested {
            order_id: order(),
            reason: None,
        },
        OrderEvent::OrderCancelled { order_id: order() },
    ]
}

fn round_trip<E: WireRecord + PartialEq + std::fmt::Debug>(events: Vec<E>) {
    for event in events {
        let bytes = encode(&event).unwrap();
        assert_eq!(&bytes[..2], &[0xC3, 0x01]);
        let entry = peek(&bytes).unwrap();
        assert_eq!(entry.event_type, event.event_type());
        assert_eq!(
            entry.version,
            registry()
                .latest(E::FAMILY, event.event_type())
                .unwrap()
                .version
        );
        assert_eq!(decode::<E>(&bytes).unwrap(), event);
    }
}

#[test]
fn every_event_round_trips_through_its_newest_schema() {
    round_trip(customer_events());
    round_trip(inventory_events());
    round_trip(order_events());
}

#[test]
fn every_event_type_has_exactly_one_schema_per_version() {
    let mut names: Vec<(&str, &str, u32)> = registry()
        .entries()
        .iter()
        .map(|e| (e.family, e.event_type, e.version))
        .collect();
    let before = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), before);
    assert_eq!(
        registry().entries().len(),
        67,
        "13 events (OrderRejected in two versions), 11 commands, 1 reply (in two versions), 19 saga events, 10 saga inputs, 1 key claim and its command (both in two versions), 7 snapshot records"
    );
}

#[test]
fn every_command_and_the_reply_round_trip() {
    use domain::customer::CustomerCommand;
    use domain::inventory::InventoryCommand;
    use domain::order::OrderCommand;
    round_trip(vec![
        CustomerCommand::Register {
            customer_id: customer(),
            name: CustomerName::try_from("Ada").unwrap(),
            credit_limit: usd(5),
        },
        CustomerCommand::ReserveCredit {
            customer_id: customer(),
            order_id: order(),
            amount: usd(5),
        },
        CustomerCommand::ReleaseCredit {
            customer_id: customer(),
            order_id: order(),
        },
    ]);
    round_trip(vec![
        InventoryCommand::AddStock {
            sku: sku("apple"),
            quantity: qty(3),
        },
        InventoryCommand::ReserveStock {
            sku: sku("apple"),
            order_id: order(),
            quantity: qty(3),
        },
        InventoryCommand::ReleaseStock {
            sku: sku("apple"),
            order_id: order(),
        },
    ]);
    let OrderEvent::OrderPlaced { lines, .. } = order_events().remove(0) else {
        unreachable!()
    };
    round_trip(vec![
        OrderCommand::Place {
            order_id: order(),
            customer_id: customer(),
            lines,
        },
        OrderCommand::Approve { order_id: order() },
        OrderCommand::Reject {
            order_id: order(),
            reason: RejectionReason::Timeout,
            detail: "no answer".into(),
        },
        OrderCommand::RequestCancellation {
            order_id: order(),
            reason: None,
        },
        OrderCommand::ConfirmCancellation { order_id: order() },
    ]);
    let key_id = domain::idempotency::KeyId::from_uuid(uuid::Uuid::from_u128(42));
    round_trip(vec![domain::idempotency::KeyCommand::Claim {
        key_id,
        route: "POST /v1/customers".into(),
        requested_at_ms: 1_000,
        expires_at_ms: 86_401_000,
    }]);
    round_trip(vec![domain::idempotency::KeyEvent::Claimed {
        key_id,
        route: "POST /v1/customers".into(),
        expires_at_ms: Some(86_401_000),
    }]);
    round_trip(vec![CommandReply {
        command_id: "cmd-1".into(),
        outcome: ReplyOutcome::Rejected,
        aggregate_id: "c-1".into(),
        version: 3,
        event_types: vec!["CreditLimitExceeded".into()],
        positions: vec![schemas::wire::reply::Position {
            partition: 2,
            offset: 41,
        }],
        code: Some(RejectionCode::DuplicateSku),
        line: Some(2),
        detail: "line 2 repeats sku a".into(),
    }]);
}

#[test]
fn garbage_gives_a_typed_error() {
    assert!(matches!(
        decode::<OrderEvent>(b"hello, world!"),
        Err(DecodeError::NotSingleObject)
    ));
    assert!(matches!(
        decode::<OrderEvent>(b""),
        Err(DecodeError::TooShort { len: 0 })
    ));
    assert!(matches!(
        decode::<OrderEvent>(&[0xC3, 0x01, 1, 2]),
        Err(DecodeError::TooShort { len: 4 })
    ));
}

#[test]
fn an_unknown_fingerprint_gives_a_typed_error() {
    let bytes = [0xC3, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0];
    match decode::<OrderEvent>(&bytes) {
        Err(DecodeError::UnknownFingerprint { fingerprint }) => {
            assert_eq!(fingerprint, "0102030405060708")
        }
        other => panic!("expected UnknownFingerprint, got {other:?}"),
    }
}

#[test]
fn a_truncated_body_gives_a_typed_error() {
    let bytes = encode(&order_events()[0]).unwrap();
    for cut in 10..bytes.len() {
        let result = decode::<OrderEvent>(&bytes[..cut]);
        assert!(
            matches!(
                result,
                Err(DecodeError::Body { .. }) | Err(DecodeError::Invalid { .. })
            ),
            "cut at {cut}: {result:?}"
        );
    }
}

#[test]
fn trailing_bytes_are_refused() {
    let mut bytes = encode(&OrderEvent::OrderApproved { order_id: order() }).unwrap();
    bytes.push(0);
    assert!(matches!(
        decode::<OrderEvent>(&bytes),
        Err(DecodeError::TrailingBytes { count: 1 })
    ));
}

#[test]
fn a_record_of_another_aggregate_is_refused() {
    let bytes = encode(&customer_events()[0]).unwrap();
    assert!(matches!(
        decode::<OrderEvent>(&bytes),
        Err(DecodeError::WrongAggregate {
            expected: "orders",
            found: "customers"
        })
    ));
}

/// Encodes a raw Avro value with a specific registered version (as an old writer would have).
fn encode_with_version(
    event_type: &str,
    version: u32,
    value: apache_avro::types::Value,
) -> Vec<u8> {
    let entry = registry()
        .entries()
        .iter()
        .find(|e| e.event_type == event_type && e.version == version)
        .unwrap();
    let mut bytes = vec![0xC3, 0x01];
    bytes.extend_from_slice(&entry.fingerprint);
    GenericDatumWriter::builder(&entry.schema)
        .build()
        .unwrap()
        .write_value(&mut bytes, value)
        .unwrap();
    bytes
}

#[test]
fn valid_avro_with_invalid_domain_values_is_refused() {
    use apache_avro::types::Value;
    let bad_id = Value::Record(vec![(
        "order_id".into(),
        Value::String("not-a-uuid".into()),
    )]);
    assert!(matches!(
        decode::<OrderEvent>(&encode_with_version("OrderApproved", 1, bad_id)),
        Err(DecodeError::Invalid {
            field: "order_id",
            ..
        })
    ));
    let bad_reason = Value::Record(vec![
        ("order_id".into(), Value::String(order().to_string())),
        ("reason".into(), Value::String("BECAUSE".into())),
        ("detail".into(), Value::String(String::new())),
    ]);
    assert!(matches!(
        decode::<OrderEvent>(&encode_with_version("OrderRejected", 2, bad_reason)),
        Err(DecodeError::UnknownValue {
            field: "reason",
            ..
        })
    ));
}

#[test]
fn random_bytes_after_a_valid_header_never_panic() {
    // A small xorshift keeps the test deterministic without a dependency.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let headers: Vec<[u8; 8]> = registry().entries().iter().map(|e| e.fingerprint).collect();
    for i in 0..20_000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let len = (state % 64) as usize;
        let mut bytes = vec![0xC3, 0x01];
        bytes.extend_from_slice(&headers[i % headers.len()]);
        bytes.extend((0..len).map(|j| (state >> (j % 8 * 8)) as u8 ^ j as u8));
        let _ = decode::<OrderEvent>(&bytes);
        let _ = decode::<CustomerEvent>(&bytes);
        let _ = decode::<InventoryEvent>(&bytes);
    }
}

/// Claims recorded before keys expired never expire; a claim sent by an API that predates expiry
/// claims the key for good, as it did.
#[test]
fn a_v1_key_claim_is_read_as_never_expiring() {
    use apache_avro::types::Value;
    use domain::idempotency::{KeyCommand, KeyEvent, KeyId};
    let key_id = KeyId::from_uuid(uuid::Uuid::from_u128(42));
    let v1 = || {
        Value::Record(vec![
            ("key_id".into(), Value::String(key_id.to_string())),
            ("route".into(), Value::String("POST /v1/orders".into())),
        ])
    };
    assert_eq!(
        decode::<KeyEvent>(&encode_with_version("KeyClaimed", 1, v1())).unwrap(),
        KeyEvent::Claimed {
            key_id,
            route: "POST /v1/orders".into(),
            expires_at_ms: None,
        }
    );
    assert_eq!(
        decode::<KeyCommand>(&encode_with_version("ClaimKey", 1, v1())).unwrap(),
        KeyCommand::Claim {
            key_id,
            route: "POST /v1/orders".into(),
            requested_at_ms: 0,
            expires_at_ms: i64::MAX,
        }
    );
}

#[test]
fn an_old_v1_record_is_read_by_the_v2_reader_with_the_default() {
    use apache_avro::types::Value;
    let v1 = Value::Record(vec![
        ("order_id".into(), Value::String(order().to_string())),
        ("reason".into(), Value::String("OUT_OF_STOCK".into())),
    ]);
    let bytes = encode_with_version("OrderRejected", 1, v1);
    assert_eq!(peek(&bytes).unwrap().version, 1);
    assert_eq!(
        decode::<OrderEvent>(&bytes).unwrap(),
        OrderEvent::OrderRejected {
            order_id: order(),
            reason: RejectionReason::OutOfStock,
            detail: String::new(),
        }
    );
}

/// A reply written by a v1 writer (a string code and HTTP field paths) during a rolling upgrade
/// decodes: the outcome and detail survive, and the untyped code is read as none.
#[test]
fn a_v1_reply_is_read_by_the_v2_reader_without_its_string_code() {
    use apache_avro::types::Value;
    let v1 = Value::Record(vec![
        ("command_id".into(), Value::String("cmd-1".into())),
        ("outcome".into(), Value::Enum(1, "REJECTED".into())),
        ("aggregate_id".into(), Value::String("c-1".into())),
        ("version".into(), Value::Long(3)),
        ("event_types".into(), Value::Array(vec![])),
        ("positions".into(), Value::Array(vec![])),
        (
            "error_code".into(),
            Value::Union(1, Box::new(Value::String("not-found".into()))),
        ),
        (
            "detail".into(),
            Value::String("customer c-1 does not exist".into()),
        ),
        ("field_errors".into(), Value::Map(Default::default())),
    ]);
    let reply = decode::<CommandReply>(&encode_with_version("CommandReply", 1, v1)).unwrap();
    assert_eq!(reply.outcome, ReplyOutcome::Rejected);
    assert_eq!(reply.code, None);
    assert_eq!(reply.detail, "customer c-1 does not exist");
}

/// A code added by a newer writer reaches an older reader as `Unknown` (the Avro enum's
/// default), not as an undecodable reply.
#[test]
fn a_rejection_code_this_reader_does_not_know_reads_as_unknown() {
    let current = &registry()
        .entries()
        .iter()
        .find(|e| e.event_type == "CommandReply" && e.version == 2)
        .unwrap()
        .schema;
    let newer_text = include_str!("../avro/command-replies/CommandReply.v2.avsc").replace(
        r#""ENCODE_FAILED","#,
        r#""ENCODE_FAILED", "SOMETHING_NEW","#,
    );
    let newer = Schema::parse_str(&newer_text).unwrap();
    let mut body = Vec::new();
    let value = apache_avro::to_value(CommandReply {
        command_id: "cmd-1".into(),
        outcome: ReplyOutcome::Rejected,
        aggregate_id: "c-1".into(),
        version: 1,
        event_types: vec![],
        positions: vec![],
        code: Some(RejectionCode::Unknown),
        line: None,
        detail: String::new(),
    })
    .unwrap();
    let value = match value {
        apache_avro::types::Value::Record(mut fields) => {
            for (name, field) in &mut fields {
                if name == "code" {
                    *field = apache_avro::types::Value::Union(
                        1,
                        Box::new(apache_avro::types::Value::Enum(19, "SOMETHING_NEW".into())),
                    );
                }
            }
            apache_avro::types::Value::Record(fields)
        }
        other => other,
    };
    GenericDatumWriter::builder(&newer)
        .build()
        .unwrap()
        .write_value(&mut body, value)
        .unwrap();
    let read = apache_avro::reader::datum::GenericDatumReader::builder(&newer)
        .reader_schema(current)
        .build()
        .unwrap()
        .read_value(&mut body.as_slice())
        .unwrap();
    let reply: CommandReply = apache_avro::from_value(&read).unwrap();
    assert_eq!(reply.code, Some(RejectionCode::Unknown));
}

fn versions() -> Vec<SchemaVersion> {
    registry()
        .entries()
        .iter()
        .map(|e| SchemaVersion {
            event_type: format!("{}/{}", e.family, e.event_type),
            version: e.version,
            schema: e.schema.clone(),
        })
        .collect()
}

#[test]
fn every_schema_version_reads_every_older_one() {
    assert_eq!(backward_violations(&versions()), Vec::<String>::new());
}

#[test]
fn the_compatibility_check_catches_a_field_added_without_a_default() {
    let broken_v3 = Schema::parse_str(
        r#"{"type":"record","name":"OrderRejected","namespace":"orderstream.events.orders","fields":[
            {"name":"order_id","type":"string"},{"name":"reason","type":"string"},
            {"name":"detail","type":"string","default":""},{"name":"refund_id","type":"string"}]}"#,
    )
    .unwrap();
    let mut all = versions();
    all.push(SchemaVersion {
        event_type: "orders/OrderRejected".into(),
        version: 3,
        schema: broken_v3,
    });
    let problems = backward_violations(&all);
    assert_eq!(problems.len(), 2, "v3 cannot read v1 nor v2: {problems:?}");
    assert!(problems
        .iter()
        .all(|p| p.starts_with("orders/OrderRejected v3 cannot read")));
}

#[test]
fn fingerprints_are_the_rabin_fingerprints_of_the_canonical_form() {
    for entry in registry().entries() {
        assert_eq!(
            entry.fingerprint.to_vec(),
            entry.schema.fingerprint::<Rabin>().bytes
        );
    }
}

/// Every kind of snapshot record reads back as written, whatever state it holds (the writer
/// restores from them; a record that changed in transit would be wrong state).
#[test]
fn every_snapshot_record_round_trips() {
    use domain::customer::Customer;
    use domain::inventory::Item;
    use domain::order::{Order, OrderLine, OrderStatus, RejectionReason};
    use domain::saga::{Hold, OrderSaga, SagaOutcome, SagaPhase};
    use domain::values::{CancellationReason, CustomerName};
    use schemas::wire::snapshots::{Checkpoint, Claim, CommandUse, Head, Snapshot};
    let head = |unreadable| Head {
        aggregate_id: "a-1".into(),
        version: 7,
        event_id: uuid::Uuid::from_u128(3),
        command_id: "cmd-7".into(),
        offset: 41,
        unreadable,
    };
    let lines = vec![
        OrderLine {
            sku: sku("apple"),
            quantity: qty(2),
            unit_price: usd(150),
        },
        OrderLine {
            sku: sku("pear"),
            quantity: qty(1),
            unit_price: usd(90),
        },
    ];
    let saga = |phase: SagaPhase, stock: Vec<Hold>, credit: Hold| OrderSaga {
        order_id: order(),
        customer_id: customer(),
        lines: lines.clone(),
        total: usd(390),
        stock,
        credit,
        phase,
    };
    let reject = SagaOutcome::Reject {
        reason: RejectionReason::OutOfStock,
        detail: "pear".into(),
    };
    round_trip(vec![
        Snapshot::Checkpoint(Checkpoint {
            format: 1,
            events_end: 1_000_001,
            clock: 1_796_313_932_602,
            window_ms: 86_400_000,
            aggregates: 3_300,
        }),
        Snapshot::CommandUse(CommandUse {
            command_id: "cmd-7".into(),
            aggregate_id: "a-1".into(),
            version: 7,
            event_types: vec!["StockAdded".into()],
            offsets: vec![41],
            request_hash: Some("h".into()),
            used_at: 5,
        }),
        Snapshot::Customer(
            head(false),
            Some(Customer {
                customer_id: customer(),
                name: CustomerName::try_from("Ada").unwrap(),
                credit_limit: usd(10_000),
                reservations: [(order(), usd(390))].into_iter().collect(),
            }),
        ),
        Snapshot::Customer(head(true), None),
        Snapshot::InventoryItem(
            head(false),
            Some(Item {
                sku: sku("apple"),
                on_hand: 12,
                reservations: [(order(), qty(2))].into_iter().collect(),
            }),
        ),
        Snapshot::Order(
            head(false),
            Some(Order {
                order_id: order(),
                customer_id: customer(),
                lines: lines.clone(),
                total: usd(390),
                status: OrderStatus::Rejected,
                rejection: Some((RejectionReason::Timeout, "no answer".into())),
                cancellation: Some(Some(
                    CancellationReason::try_from("changed my mind").unwrap(),
                )),
            }),
        ),
        Snapshot::Order(
            head(false),
            Some(Order {
                order_id: order(),
                customer_id: customer(),
                lines: lines.clone(),
                total: usd(390),
                status: OrderStatus::Pending,
                rejection: None,
                cancellation: Some(None),
            }),
        ),
        Snapshot::OrderSaga(
            head(false),
            Some(saga(
                SagaPhase::ReservingStock { line: 1 },
                vec![Hold::Held, Hold::Requested],
                Hold::NotRequested,
            )),
        ),
        Snapshot::OrderSaga(
            head(false),
            Some(saga(
                SagaPhase::Compensating {
                    outcome: reject.clone(),
                },
                vec![
                    Hold::Releasing {
                        attempt: 2,
                        again: true,
                    },
                    Hold::Refused,
                ],
                Hold::Released { attempt: 1 },
            )),
        ),
        Snapshot::OrderSaga(
            head(false),
            Some(saga(
                SagaPhase::Finishing {
                    outcome: SagaOutcome::Cancel,
                },
                vec![Hold::Released { attempt: 0 }, Hold::Held],
                Hold::Held,
            )),
        ),
        Snapshot::OrderSaga(
            head(false),
            Some(saga(
                SagaPhase::Rejected {
                    reason: RejectionReason::CreditLimitExceeded,
                },
                vec![Hold::Held, Hold::Held],
                Hold::Refused,
            )),
        ),
        Snapshot::OrderSaga(head(false), None),
        Snapshot::IdempotencyKey(
            head(false),
            Some(Claim {
                route: "POST /v1/orders".into(),
                expires_at_ms: Some(86_400_000),
            }),
        ),
        Snapshot::IdempotencyKey(
            head(false),
            Some(Claim {
                route: "POST /v1/orders".into(),
                expires_at_ms: None,
            }),
        ),
    ]);
}
