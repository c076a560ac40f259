"""Stripe's webhook endpoint: verify, store once, process (``billing.stripe_events`` does the work)."""

from __future__ import annotations

from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from billing import stripe_events, stripe_gateway


@csrf_exempt  # Stripe signs the body instead: the signature is the proof of origin
@require_POST
def stripe_webhook(request):
    body = request.body  # the raw bytes: the signature covers them exactly
    header = request.headers.get("Stripe-Signature", "")
    try:
        event = stripe_gateway.webhook_event(body, header)
    except stripe_gateway.WebhookSignatureInvalid as exc:
        stripe_events.webhook_refused(reason=str(exc), request=request, body_bytes=len(body), signed=bool(header))
        return JsonResponse({"error": "invalid_signature",
                             "message": "The Stripe-Signature header does not verify this body."}, status=400)
    stored, new = stripe_events.event_store(event=event)
    if new:
        # Processed now (a few re-reads from Stripe); if Stripe is unreachable the event waits for the retry job.
        stripe_events.event_process(event_id=stored.event_id)
    return JsonResponse({"received": True, "duplicate": not new})
