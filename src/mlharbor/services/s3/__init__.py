"""Amazon S3 on MLHarbor's endpoint, over its object store: buckets, objects, multipart uploads."""
