"""Table definitions used by queries. Alembic migrations (store/migrations) create and evolve them.

Every resource row carries (account_id, region): another account can neither see nor touch it.
``status`` is written only through store/transitions.py; ``version`` is its compare-and-set counter.
Times are epoch seconds (float), the way both APIs put them on the wire.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

server_state = Table(
    "server_state",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

# Who runs each piece of long work now: one row per running (or starting) work item, held by one server
# process and renewed by it; another server takes over a lease that expired (its owner died). ``epoch`` grows
# at every takeover: every write a holder makes names it, so a holder that lost its lease changes nothing.
work_leases = Table(
    "work_leases",
    metadata,
    Column("work_id", String(1024), primary_key=True),
    Column("kind", String(32), nullable=False, index=True),
    Column("owner", String(128), nullable=False, index=True),
    Column("epoch", Integer, nullable=False),
    Column("acquired_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    # The worker's last heartbeat progress (e.g. a serving worker's address and readiness), for every server.
    Column("progress", JSON),
)

tags = Table(
    "tags",
    metadata,
    Column("resource_arn", String(2048), primary_key=True),
    Column("tag_key", String(128), primary_key=True),
    Column("tag_value", String(256), nullable=False),
)

stream_processors = Table(
    "stream_processors",
    metadata,
    Column("arn", String(2048), primary_key=True),
    Column("account_id", String(12), nullable=False),
    Column("region", String(32), nullable=False),
    Column("name", String(128), nullable=False),
    Column("status", String(16), nullable=False),
    Column("status_message", Text),
    # Creation identity: a resource deleted and created again under the same name (same ARN) is another
    # incarnation; every worker fence compares it (services/attempts.py).
    Column("incarnation", String(32), nullable=False),
    Column("version", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    # Exclusive bindings AWS enforces: one video stream and one Kinesis output per processor.
    Column("input_stream_arn", String(2048), nullable=False),
    Column("output_stream_arn", String(2048)),
    # The create request's description members, as validated against the model.
    Column("spec", JSON, nullable=False),
    # The current session: StartStreamProcessor's id and request; every start and every worker restart
    # is a new attempt (a superseded worker can no longer write); restarts after crashes this session.
    Column("attempt", Integer, nullable=False, default=0),
    Column("session_id", String(64)),
    Column("session", JSON),
    Column("restarts", Integer, nullable=False, default=0),
    UniqueConstraint("account_id", "region", "name", name="uq_stream_processor_name"),
    Index("ix_stream_processors_status", "status"),  # the reconcile pass reads the active ones
)

entity_recognizers = Table(
    "entity_recognizers",
    metadata,
    Column("arn", String(256), primary_key=True),
    Column("account_id", String(12), nullable=False),
    Column("region", String(32), nullable=False),
    Column("name", String(63), nullable=False),
    # "" for a recognizer created without VersionName (keeps the uniqueness constraint simple).
    Column("version_name", String(63), nullable=False, default=""),
    # Creation identity: a resource deleted and created again under the same name (same ARN) is another
    # incarnation; every worker fence compares it (services/attempts.py).
    Column("incarnation", String(32), nullable=False),
    Column("status", String(24), nullable=False),
    Column("message", Text),
    Column("version", Integer, nullable=False, default=0),
    Column("submitted_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("spec", JSON, nullable=False),
    Column("details", JSON),
    # ClientRequestToken and a fingerprint of the request it came with (same token + other request = error).
    Column("client_token", String(64)),
    Column("request_hash", String(64)),
    # Training attempts: a crashed worker is retried from the start with the next attempt number;
    # ``crashes`` counts the deaths of its own workers (a server restart is not one).
    Column("attempt", Integer, nullable=False, default=0),
    Column("crashes", Integer, nullable=False, default=0),
    Column("artifact_uri", String(1024)),
    # The training curve for the console: {"epochs": [[epoch, dev F1], ...], "best_epoch", "attempt"}.
    Column("curve", JSON),
    UniqueConstraint("account_id", "region", "name", "version_name", name="uq_entity_recognizer_name"),
)

comprehend_endpoints = Table(
    "comprehend_endpoints",
    metadata,
    Column("arn", String(256), primary_key=True),
    Column("account_id", String(12), nullable=False),
    Column("region", String(32), nullable=False),
    Column("name", String(40), nullable=False),
    # Creation identity: a resource deleted and created again under the same name (same ARN) is another
    # incarnation; every worker fence compares it (services/attempts.py).
    Column("incarnation", String(32), nullable=False),
    Column("status", String(16), nullable=False),
    Column("message", Text),
    Column("version", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    # What is being served now, and what Create/Update asked for (they differ while CREATING/UPDATING).
    Column("model_arn", String(256)),
    Column("current_units", Integer, nullable=False, default=0),
    Column("data_access_role_arn", String(2048)),
    Column("desired_model_arn", String(256), nullable=False),
    Column("desired_units", Integer, nullable=False),
    Column("desired_data_access_role_arn", String(2048)),
    # The model artifact the serving workers load (the recognizer's at the time it was chosen).
    Column("artifact_uri", String(1024)),
    # Serving generation: bumped by every deployment (create, update, restart), it names the workers.
    Column("generation", Integer, nullable=False, default=0),
    Column("client_token", String(64)),
    Column("request_hash", String(64)),
    UniqueConstraint("account_id", "region", "name", name="uq_comprehend_endpoint_name"),
)

entities_detection_jobs = Table(
    "entities_detection_jobs",
    metadata,
    Column("job_id", String(32), primary_key=True),
    Column("arn", String(256), nullable=False, unique=True),
    Column("account_id", String(12), nullable=False),
    Column("region", String(32), nullable=False),
    Column("name", String(256)),
    # Creation identity: a resource deleted and created again under the same name (same ARN) is another
    # incarnation; every worker fence compares it (services/attempts.py).
    Column("incarnation", String(32), nullable=False),
    Column("status", String(16), nullable=False),
    Column("message", Text),
    Column("version", Integer, nullable=False, default=0),
    Column("submitted_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("end_time", Float),
    Column("recognizer_arn", String(256), nullable=False),
    # The start request's members Describe echoes back (InputDataConfig, OutputDataConfig, ...).
    Column("spec", JSON, nullable=False),
    Column("details", JSON),
    Column("client_token", String(64)),
    Column("request_hash", String(64)),
    # Like training: a worker a crash interrupted is retried with the next attempt number.
    Column("attempt", Integer, nullable=False, default=0),
    Column("crashes", Integer, nullable=False, default=0),
)

face_collections = Table(
    "face_collections",
    metadata,
    Column("arn", String(512), primary_key=True),
    Column("account_id", String(12), nullable=False),
    Column("region", String(32), nullable=False),
    Column("collection_id", String(255), nullable=False),
    # The face engine whose vectors the collection holds: other engines' vectors are not comparable.
    Column("model_version", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    # Kept with every change so Describe needs no count over millions of rows, and so a process
    # holding the collection's vectors in memory can tell (version) whether they are current.
    Column("face_count", Integer, nullable=False, default=0),
    Column("version", Integer, nullable=False, default=0),
    UniqueConstraint("account_id", "region", "collection_id", name="uq_face_collection_id"),
)

faces = Table(
    "faces",
    metadata,
    # The vector's id in the in-memory index; increasing, so "what is new since" is one range query.
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("collection_arn", String(512), nullable=False),
    Column("face_id", String(36), nullable=False, unique=True),
    Column("image_id", String(36), nullable=False),
    Column("external_image_id", String(255)),
    Column("confidence", Float, nullable=False),
    Column("box", JSON, nullable=False),  # BoundingBox as ratios of the image, as the API returns it
    Column("model_version", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("descriptor", LargeBinary, nullable=False),  # float32 little-endian, the engine's dimension
    # Where the indexed image came from when IndexFaces read it from S3 (s3://bucket/key), for the console.
    Column("source", String(2048)),
    Index("ix_faces_collection_face", "collection_arn", "face_id"),
    Index("ix_faces_collection_seq", "collection_arn", "seq"),
    # Never reuse a seq (SQLite would hand out a deleted maximum again): indexes rely on seqs only growing.
    sqlite_autoincrement=True,
)

# The console's live view of a stream processor: a console watching it keeps ``watched_until`` ahead of now;
# while it is, the processor's worker overwrites the latest analysed frame here (a small JPEG and what was
# found in it), so any API server can show it. One row per processor: nothing piles up.
live_views = Table(
    "live_views",
    metadata,
    Column("processor_arn", String(2048), primary_key=True),
    Column("account_id", String(12), nullable=False),
    Column("region", String(32), nullable=False),
    Column("watched_until", Float, nullable=False),
    Column("seq", Integer, nullable=False, default=0, server_default="0"),
    Column("analysed_at", Float),
    Column("meta", JSON),
    Column("jpeg", LargeBinary),
)

video_streams = Table(
    "video_streams",
    metadata,
    Column("arn", String(1024), primary_key=True),
    Column("account_id", String(12), nullable=False),
    Column("region", String(32), nullable=False),
    Column("name", String(256), nullable=False),
    Column("status", String(16), nullable=False),
    Column("version", Integer, nullable=False, default=0),  # compare-and-set counter
    Column("stream_version", String(64), nullable=False),  # Kinesis Video's Version: new on every update
    Column("incarnation", String(32), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("device_name", String(128)),
    Column("media_type", String(128)),
    Column("kms_key_id", String(2048)),
    Column("retention_hours", Integer, nullable=False, default=0),
    UniqueConstraint("account_id", "region", "name", name="uq_video_stream_name"),
)


# Kinesis Data Streams. A stream's shards and records hang off its ``stream_id`` (new for every CreateStream),
# so a stream re-created under the same name (same ARN) never sees its namesake's records; the retention pass
# deletes the records of streams that are gone.
kinesis_streams = Table(
    "kinesis_streams",
    metadata,
    Column("stream_id", String(32), primary_key=True),
    Column("arn", String(1024), nullable=False),
    Column("account_id", String(12), nullable=False),
    Column("region", String(32), nullable=False),
    Column("name", String(128), nullable=False),
    Column("status", String(16), nullable=False),
    Column("version", Integer, nullable=False, default=0),  # compare-and-set counter
    Column("mode", String(16), nullable=False),  # PROVISIONED | ON_DEMAND
    Column("retention_hours", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("encryption_type", String(8), nullable=False, default="NONE"),
    Column("key_id", String(2048)),
    Column("max_record_kib", Integer, nullable=False),
    Column("distribution", String(24), nullable=False),  # RecordDistributionStrategy
    UniqueConstraint("account_id", "region", "name", name="uq_kinesis_stream_name"),
)

# ``next_sequence`` is the shard's record counter: PutRecord(s) take numbers from it in the transaction that
# stores the records, so numbers only grow, in commit order (the row lock orders writers on PostgreSQL).
kinesis_shards = Table(
    "kinesis_shards",
    metadata,
    Column("stream_id", String(32), primary_key=True),
    Column("shard_index", Integer, primary_key=True),
    Column("start_hash", String(40), nullable=False),  # decimal strings: 2**128 does not fit a BIGINT
    Column("end_hash", String(40), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("next_sequence", BigInteger, nullable=False),
)

kinesis_records = Table(
    "kinesis_records",
    metadata,
    Column("stream_id", String(32), primary_key=True),
    Column("shard_index", Integer, primary_key=True),
    Column("sequence", BigInteger, primary_key=True),
    Column("partition_key", String(256), nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("arrival", Float, nullable=False),
    Index("ix_kinesis_records_arrival", "stream_id", "shard_index", "arrival"),
)

# Kinesis Video fragments: one Cluster each, stored as a whole MKV document (header + Cluster) in the object
# store. Fragment numbers are 47-digit decimal strings, so string order is number order.
video_fragments = Table(
    "video_fragments",
    metadata,
    Column("stream_arn", String(1024), primary_key=True),
    Column("fragment_number", String(64), primary_key=True),
    Column("producer_ts", Float, nullable=False),
    Column("server_ts", Float, nullable=False),
    Column("fragment_timecode", BigInteger, nullable=False),  # the Cluster's Timecode, as it was sent
    Column("duration_ms", Integer, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("header_len", Integer, nullable=False),  # the object's bytes before the Cluster
    Column("frames", Integer, nullable=False),
    Column("blob_uri", String(2048), nullable=False),
    Column("persisted", Boolean, nullable=False),  # False: retention 0, kept only for live readers
    Column("expires_at", Float, nullable=False),
    Index("ix_video_fragments_producer", "stream_arn", "producer_ts"),
    Index("ix_video_fragments_server", "stream_arn", "server_ts"),
    Index("ix_video_fragments_expiry", "expires_at"),
)


# --- SNS
sns_topics = Table(
    "sns_topics",
    metadata,
    Column("arn", String(512), primary_key=True),
    Column("account_id", String(12), nullable=False),
    Column("region", String(32), nullable=False),
    Column("name", String(256), nullable=False),
    Column("attributes", JSON, nullable=False),  # the attributes set by the user (name -> string)
    Column("subscriptions_deleted", Integer, nullable=False, default=0),
    Column("version", Integer, nullable=False, default=0),  # compare-and-set counter of attribute changes
    Column("created_at", Float, nullable=False),
    UniqueConstraint("account_id", "region", "name", name="uq_sns_topic_name"),
)

# status: PendingConfirmation -> Confirmed -> Deleted (kept while its UnsubscribeConfirmation's token may
# restore it). endpoint_key is the hash of (protocol, endpoint) while the subscription is not Deleted, NULL
# after: one live subscription per endpoint and topic, enforced by the database.
sns_subscriptions = Table(
    "sns_subscriptions",
    metadata,
    Column("arn", String(600), primary_key=True),
    Column("topic_arn", String(512), nullable=False),
    Column("account_id", String(12), nullable=False),
    Column("region", String(32), nullable=False),
    Column("protocol", String(16), nullable=False),
    Column("endpoint", Text, nullable=False),
    Column("endpoint_key", String(64)),
    Column("status", String(32), nullable=False),
    Column("version", Integer, nullable=False, default=0),
    Column("token", String(128), nullable=False),
    Column("token_expires_at", Float, nullable=False),
    Column("authenticated", Boolean, nullable=False, default=False),  # ConfirmationWasAuthenticated
    Column("unsubscribe_needs_auth", Boolean, nullable=False, default=False),  # AuthenticateOnUnsubscribe
    Column("attributes", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("topic_arn", "endpoint_key", name="uq_sns_subscription_endpoint"),
    Index("ix_sns_subscriptions_owner", "account_id", "region", "arn"),
    Index("ix_sns_subscriptions_token", "topic_arn", "token"),
    Index("ix_sns_subscriptions_expiry", "status", "token_expires_at"),
)

# The outbox: a message (a notification, or a confirmation sent to one subscription) and one delivery row per
# subscription it goes to, written in the transaction that acknowledges it. A delivery is claimable once
# due_at has passed; claiming sets claim and moves due_at to the end of the lease, so a claimer that dies
# leaves it to be claimed again. A delivery is deleted once delivered or given up.
sns_messages = Table(
    "sns_messages",
    metadata,
    Column("message_id", String(36), primary_key=True),
    Column("account_id", String(12), nullable=False),
    Column("region", String(32), nullable=False),
    Column("topic_arn", String(512), nullable=False),
    Column(
        "kind", String(32), nullable=False
    ),  # Notification | SubscriptionConfirmation | UnsubscribeConfirmation
    Column("message", Text, nullable=False),
    Column("subject", Text),
    Column("structure", String(8)),  # "json": the message holds one text per protocol
    Column("attributes", JSON),  # MessageAttributes as the Notification shows them
    Column("token", String(128)),  # confirmations: the token the SubscribeURL carries
    Column("timestamp", String(32), nullable=False),
    Column("signature_version", String(1), nullable=False),
    Column(
        "base_url", String(2048), nullable=False
    ),  # SubscribeURL, UnsubscribeURL, SigningCertURL start here
    Column("created_at", Float, nullable=False),
)

sns_deliveries = Table(
    "sns_deliveries",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("message_id", String(36), nullable=False),
    Column("subscription_arn", String(600), nullable=False),
    Column("endpoint", Text, nullable=False),
    Column("raw", Boolean, nullable=False),
    Column("policy", JSON, nullable=False),  # the effective retry and request policy when published
    Column("attempts", Integer, nullable=False, default=0),
    Column("due_at", Float, nullable=False),
    Column("claim", String(36)),
    Column("last_error", Text),
    Column("created_at", Float, nullable=False),
    Index("ix_sns_deliveries_due", "due_at"),
    Index("ix_sns_deliveries_message", "message_id"),
)


# --- S3: who owns each bucket name (names are global, as in AWS), and multipart uploads in progress. Objects,
# with their ETag and attributes, live in the object store only, so objects the ML services write there are
# readable through the S3 API as they are.
s3_buckets = Table(
    "s3_buckets",
    metadata,
    Column("name", String(63), primary_key=True),
    Column("account_id", String(12), nullable=False),
    Column("region", String(32), nullable=False),
    Column("created_at", Float, nullable=False),
    Index("ix_s3_buckets_owner", "account_id", "name"),
)

# An upload's parts are objects in the uploads bucket (each upload of a part a new object, blob_key, so a part
# uploaded twice never mixes bytes); the row names the one that counts.
s3_uploads = Table(
    "s3_uploads",
    metadata,
    Column("upload_id", String(64), primary_key=True),
    Column("bucket", String(63), nullable=False),
    Column("key", String(1024).with_variant(String(1024, collation="C"), "postgresql"), nullable=False),
    Column("account_id", String(12), nullable=False),
    Column("attributes", JSON, nullable=False),  # the object's attributes, given at CreateMultipartUpload
    Column("checksum_algorithm", String(16)),
    Column("checksum_type", String(16)),  # COMPOSITE | FULL_OBJECT
    Column("initiated_at", Float, nullable=False),
    Index("ix_s3_uploads_bucket", "bucket", "key", "initiated_at"),
)

s3_parts = Table(
    "s3_parts",
    metadata,
    Column("upload_id", String(64), primary_key=True),
    Column("part_number", Integer, primary_key=True),
    Column("blob_key", String(256), nullable=False),
    Column("etag", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("checksums", JSON, nullable=False),  # algorithm -> base64 value of this part
    Column("last_modified", Float, nullable=False),
)
