#!/usr/bin/env python3
"""Mints the JOSE fixtures the jwt filter's tests verify: tokens from an independent JOSE
implementation (PyJWT + cryptography), one per supported algorithm, with fixed timestamps.

Run once and commit the output; re-running makes new keys (and a new fixtures.json):

    python3 -m venv .tools/py && .tools/py/bin/pip install 'pyjwt[crypto]'
    .tools/py/bin/python tests/jose/mint.py > tests/jose/fixtures.json

The keys are throwaway test keys; only public JWKs are written (plus the HS256 test secret,
which the tests need to configure the filter).
"""

import json
import secrets
import sys

import cryptography
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

ISSUER = "https://idp.example"
AUDIENCE = "phi-api"
IAT = 1767225600  # 2026-01-01T00:00:00Z
EXP = IAT + 3600
VERIFY_AT = IAT + 1800


def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def main():
    keys = {
        "RS256": rsa_key(),
        "RS384": rsa_key(),
        "RS512": rsa_key(),
        "PS256": rsa_key(),
        "PS384": rsa_key(),
        "PS512": rsa_key(),
        "ES256": ec.generate_private_key(ec.SECP256R1()),
        "ES384": ec.generate_private_key(ec.SECP384R1()),
        "EdDSA": ed25519.Ed25519PrivateKey.generate(),
    }
    exporters = {"RS": RSAAlgorithm, "PS": RSAAlgorithm, "ES": ECAlgorithm, "Ed": OKPAlgorithm}

    jwks = []
    tokens = []
    for alg, private in keys.items():
        kid = alg.lower()
        jwk = exporters[alg[:2]].to_jwk(private.public_key(), as_dict=True)
        jwk.update({"kid": kid, "alg": alg, "use": "sig"})
        jwks.append(jwk)
        claims = claims_for(alg)
        token = jwt.encode(claims, private, algorithm=alg, headers={"kid": kid})
        tokens.append({"alg": alg, "kid": kid, "token": token, "claims": claims})

    hs256_secret = secrets.token_urlsafe(48)
    claims = claims_for("HS256")
    tokens.append({
        "alg": "HS256",
        "kid": None,
        "token": jwt.encode(claims, hs256_secret.encode(), algorithm="HS256"),
        "claims": claims,
    })

    rs256_public_pem = keys["RS256"].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()

    out = {
        "generator": f"tests/jose/mint.py, PyJWT {jwt.__version__}, cryptography {cryptography.__version__}",
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "iat": IAT,
        "exp": EXP,
        "verify_at": VERIFY_AT,
        "jwks": {"keys": jwks},
        "hs256_secret": hs256_secret,
        "rs256_public_pem": rs256_public_pem,
        "tokens": tokens,
    }
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")


def claims_for(alg):
    # Alternate `aud` forms (string / array) and scope forms (string / list) across algorithms
    # so both shapes are exercised against an independent encoder.
    odd = alg in ("RS384", "PS256", "PS512", "ES384", "HS256")
    claims = {
        "iss": ISSUER,
        "sub": f"user-{alg.lower()}",
        "aud": [AUDIENCE, "audit"] if odd else AUDIENCE,
        "iat": IAT,
        "nbf": IAT,
        "exp": EXP,
        "jti": f"jti-{alg.lower()}",
        "roles": ["nurse"],
        "tenant": "north",
        "purpose_of_use": "TREAT",
    }
    if odd:
        claims["scp"] = ["patient.read", "patient.write"]
    else:
        claims["scope"] = "patient.read patient.write"
    return claims


if __name__ == "__main__":
    main()
