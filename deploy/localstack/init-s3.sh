#!/bin/sh
# LocalStack ready hook: the bucket the invoicing stage keeps invoice PDFs in
# (ORDERFLOW_INVOICE_STORE=s3://orderflow-invoices). Safe to run again.
awslocal s3 mb s3://orderflow-invoices 2>/dev/null || true
