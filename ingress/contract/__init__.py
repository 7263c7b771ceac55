"""The public contract: routes, schemas, validation, errors and their envelope, auth, body reading."""
