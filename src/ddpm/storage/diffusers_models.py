"""Where folders that `ddpm export` wrote before 2026-12-06 name ddpm's own model classes: kept so
that they load as they did, after `import ddpm.storage.diffusers_models`. Today's folders name
`ddpm.models`, which `import ddpm` alone makes available (models/for_diffusers.py)."""

from diffusers import ConfigMixin, ModelMixin  # noqa: F401 (diffusers looks its loaders up in the module a folder names)

from ..models.for_diffusers import DdpmAutoencoder, DdpmUNet  # noqa: F401
