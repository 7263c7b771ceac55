"""The contract's routes, one ``APIRouter`` per endpoint group, assembled by
:func:`ingress.contract.api.create_api`; :mod:`.docs` says in OpenAPI what each can answer."""
