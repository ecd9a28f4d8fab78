from __future__ import annotations

from django import forms
from django.conf import settings

from onboarding.models import Customer
from pool.models import WorkerCluster


class ResizeForm(forms.Form):
    workers = forms.IntegerField(min_value=1)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Built per form: POOL_MAX_WORKERS is a setting and tests override it.
        self.fields["workers"] = forms.IntegerField(
            min_value=1, max_value=settings.POOL_MAX_WORKERS
        )


class ClusterCreateForm(forms.ModelForm):
    class Meta:
        model = WorkerCluster
        fields = ["name", "desired_workers"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # The same bounds as a resize: 1 to POOL_MAX_WORKERS per host.
        self.fields["desired_workers"] = forms.IntegerField(
            min_value=1, max_value=settings.POOL_MAX_WORKERS, initial=2, label="Workers per host"
        )


class MoveForm(forms.Form):
    customer = forms.ModelChoiceField(Customer.objects.all(), to_field_name="slug")
    cluster = forms.ModelChoiceField(WorkerCluster.objects.all(), to_field_name="name")


class WeightForm(forms.Form):
    customer = forms.ModelChoiceField(Customer.objects.all(), to_field_name="slug")
    weight = forms.IntegerField(min_value=1, max_value=1000)
