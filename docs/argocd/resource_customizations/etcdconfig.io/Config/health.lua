-- Health of an etcdconfig.io Config (https://github.com/etcdconfig/etcdconfig).
-- The status is in kstatus format: status.observedGeneration and the Ready, Reconciling and
-- Stalled conditions, each with its own observedGeneration; Intact=False reports a stored
-- version that fails verification. Written by the operator's reconcile code:
-- https://github.com/etcdconfig/etcdconfig/blob/main/operator/etcdconfig/reconcile.py
-- Uses only the base library, so it runs unchanged as an argocd-cm customization too.
local hs = {}
hs.status = "Progressing"
hs.message = "Waiting for the etcdconfig operator to observe the Config"

-- observedGeneration 0 is the CRD's default: the operator has written no status yet
if obj.status == nil or obj.status.observedGeneration == nil
    or obj.status.observedGeneration == 0 then
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and obj.status.observedGeneration ~= generation then
  hs.message = "Waiting for the etcdconfig operator to observe generation " .. generation
  return hs
end

-- Conditions by type, those of the current generation only.
local conditions = {}
if obj.status.conditions ~= nil then
  for _, condition in ipairs(obj.status.conditions) do
    if generation == nil or condition.observedGeneration == nil
        or condition.observedGeneration == generation then
      conditions[condition.type] = condition
    end
  end
end

local function messageOf(condition)
  if condition.message ~= nil and condition.message ~= "" then
    return condition.message
  end
  return condition.reason or condition.type
end

-- Stalled: the operator cannot continue until the spec is fixed (invalid data or schema,
-- too large) or the store is repaired.
local stalled = conditions["Stalled"]
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = messageOf(stalled)
  return hs
end

-- Reconciling: work pending (etcd unreachable, lock busy, publishing retried, ...).
local reconciling = conditions["Reconciling"]
if reconciling ~= nil and reconciling.status == "True" then
  hs.message = messageOf(reconciling)
  return hs
end

local ready = conditions["Ready"]
if ready == nil then
  hs.message = "Waiting for the Ready condition"
  return hs
end
if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = messageOf(ready)
  return hs
end

-- Not ready, neither reconciling nor stalled: an integrity violation found in a stored
-- version needs a person (`etcdconfig verify`), as a stall does.
local intact = conditions["Intact"]
if intact ~= nil and intact.status == "False" then
  hs.status = "Degraded"
  hs.message = messageOf(intact)
  return hs
end

hs.message = messageOf(ready)
return hs
