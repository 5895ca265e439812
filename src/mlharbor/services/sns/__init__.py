"""Amazon SNS: topics, HTTP/HTTPS subscriptions, durable signed delivery."""
