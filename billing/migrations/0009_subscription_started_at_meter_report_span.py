"""Exact billing at the edges of an hour: the subscription's start (Stripe's ``start_date``) on Subscription, and
each meter report's span start (the meter event's timestamp), so that an hour a subscription starts or a billing
period ends in is reported in parts. Reports written before are whole hours: their span starts at their hour."""

from django.db import migrations, models


def spans_are_hours(apps, schema_editor):
    MeterReport = apps.get_model("billing", "MeterReport")
    MeterReport.objects.update(span_start=models.F("hour"))


class Migration(migrations.Migration):

    dependencies = [
        ('billing', '0008_subscription_payment_notices'),
    ]

    operations = [
        migrations.AddField(
            model_name='subscription',
            name='started_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='meterreport',
            name='span_start',
            field=models.DateTimeField(null=True),
        ),
        migrations.RunPython(spans_are_hours, migrations.RunPython.noop),
        migrations.AlterField(
            model_name='meterreport',
            name='span_start',
            field=models.DateTimeField(help_text='Where the span starts: the hour, or a part of it.'),
        ),
        migrations.AlterField(
            model_name='meterreport',
            name='hour',
            field=models.DateTimeField(help_text='The UTC hour the span lies in.'),
        ),
        migrations.AlterField(
            model_name='meterreport',
            name='sequence',
            field=models.PositiveSmallIntegerField(default=0, help_text="0 for the span's report, 1… corrections."),
        ),
        migrations.RemoveConstraint(
            model_name='meterreport',
            name='meter_report_once',
        ),
        migrations.AddConstraint(
            model_name='meterreport',
            constraint=models.UniqueConstraint(fields=('tenant', 'meter', 'span_start', 'sequence'),
                                               name='meter_report_once'),
        ),
        migrations.AlterModelOptions(
            name='meterreport',
            options={'ordering': ['span_start', 'meter', 'sequence']},
        ),
    ]
