-- Argo CD health check for deployctl.dev/ProductionStack.
-- Install it as argocd-cm key resource.customizations.health.deployctl.dev_ProductionStack
-- (argocd/argocd-cm.yaml carries this file; tests/packaging checks the two match).
-- Written for Argo CD's Lua 5.1 (gopher-lua); also runs on Lua 5.4 for the tests.
--   Healthy                                -> Healthy
--   Progressing, RollingBack, Terminating  -> Progressing
--   Paused                                 -> Suspended
--   Degraded, RolledBack, Invalid          -> Degraded
-- Until the controller has observed the current generation, the stack is Progressing,
-- so a sync is not reported Healthy on the previous revision's status.
local hs = {}

local function condition(status, condition_type)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == condition_type then
      return c
    end
  end
  return nil
end

local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the deployctl controller to report on this stack"
  return hs
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the deployctl controller to observe generation " .. tostring(generation)
  return hs
end

local health = {
  Healthy = "Healthy",
  Progressing = "Progressing",
  RollingBack = "Progressing",
  Terminating = "Progressing",
  Paused = "Suspended",
  Degraded = "Degraded",
  RolledBack = "Degraded",
  Invalid = "Degraded",
}

local message = status.message
if message == nil then
  local ready = condition(status, "Ready")
  if ready ~= nil then
    message = ready.message
  end
end

hs.status = health[status.phase]
if hs.status == nil then
  hs.status = "Unknown"
end
if message ~= nil and message ~= "" then
  hs.message = status.phase .. ": " .. message
else
  hs.message = status.phase
end
return hs
