"""Real servers on 127.0.0.1 for the benchmarks and the tests: an aiosmtpd smarthost, a private
Dovecot, self-signed certificates, free ports. Nothing here imports pytest or `tests`; the tests
import these (the fixtures around them are in tests/conftest.py), never the other way round.
"""
