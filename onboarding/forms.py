"""Forms of the onboarding pages."""

from __future__ import annotations

from django import forms

from onboarding.models import Customer


class SignForm(forms.Form):
    note = forms.CharField(required=False, max_length=2000, strip=True)


class ReasonForm(forms.Form):
    """Un-signing and overriding both need a reason: the next reader must know why."""

    reason = forms.CharField(
        max_length=2000, strip=True, error_messages={"required": "Give a reason."}
    )


class StartForm(forms.Form):
    customer = forms.ModelChoiceField(
        queryset=Customer.objects.all(),
        to_field_name="slug",
        error_messages={"invalid_choice": "No such customer."},
    )
