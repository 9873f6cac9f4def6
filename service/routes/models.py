"""`/models`: what can be served."""

from fastapi import APIRouter

from service.deps import RegistryDep
from service.errors import APIError, error_responses
from service.registry import ModelNotFound
from service.schemas import ModelDetail, ModelList, ModelSummary

router = APIRouter(prefix="/models", tags=["models"])


@router.get("", response_model=ModelList, summary="The models that can be served")
def list_models(registry: RegistryDep) -> ModelList:
    return ModelList(models=[ModelSummary.model_validate(m) for m in registry.list_models()])


@router.get(
    "/{name}", response_model=ModelDetail, summary="One model, with all its versions", responses=error_responses(404)
)
def get_model(name: str, registry: RegistryDep) -> ModelDetail:
    try:
        return ModelDetail.model_validate(registry.describe(name))
    except ModelNotFound as e:
        raise APIError(404, "model_not_found", str(e), detail={"available": e.available}) from None
