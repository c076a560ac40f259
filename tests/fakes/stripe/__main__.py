"""``python -m tests.fakes.stripe``: run the Stripe stand-in until interrupted (for `make run`)."""

from __future__ import annotations

import argparse
import threading

from tests.fakes.stripe.server import DEFAULT_WEBHOOK_SECRET, StripeFake


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.stripe", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=12111)
    parser.add_argument(
        "--webhook-url",
        default=None,
        help="where to POST signed events, e.g. http://127.0.0.1:8000/billing/stripe/webhook/",
    )
    parser.add_argument("--webhook-secret", default=DEFAULT_WEBHOOK_SECRET)
    parser.add_argument("--api-key", default=None, help="the only secret key accepted (default: any sk_test_ key)")
    args = parser.parse_args(argv)
    fake = StripeFake(
        api_key=args.api_key,
        webhook_secret=args.webhook_secret,
        webhook_url=args.webhook_url,
        host=args.host,
        port=args.port,
    ).start()
    print(f"Stripe stand-in on {fake.base_url}", flush=True)
    print(
        f"  STRIPE_API_BASE={fake.base_url} STRIPE_SECRET_KEY={args.api_key or 'sk_test_anything'} "
        f"STRIPE_WEBHOOK_SECRET={args.webhook_secret}",
        flush=True,
    )
    print(f"  webhooks: {args.webhook_url or 'not sent (GET /_fake/events to read them)'}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
