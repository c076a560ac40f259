"""A plan's own token prices (per million tokens), over the platform's ModelPrice for tenants on that plan."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('billing', '0009_subscription_started_at_meter_report_span'),
    ]

    operations = [
        migrations.CreateModel(
            name='PlanModelPrice',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('model', models.CharField(max_length=200)),
                ('input_per_1m_aud', models.DecimalField(decimal_places=4, max_digits=14)),
                ('output_per_1m_aud', models.DecimalField(decimal_places=4, max_digits=14)),
                ('updated_at', models.DateTimeField(auto_now=True)),
                ('plan', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='model_prices', to='billing.plan')),
            ],
            options={
                'ordering': ['plan', 'model'],
                'constraints': [models.UniqueConstraint(fields=('plan', 'model'), name='one_price_per_plan_model')],
            },
        ),
    ]
