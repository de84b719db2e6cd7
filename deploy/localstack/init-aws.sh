#!/bin/sh
# LocalStack runs this once it is ready (docker-compose.yml mounts it under
# /etc/localstack/init/ready.d): it creates what the bridge's AWS sinks need. The names must
# match deploy/bridge/aws-local.toml.
set -eu
awslocal sqs create-queue --queue-name orderflow-notifications
awslocal ses verify-email-identity --email-address orders@orderflow.example
